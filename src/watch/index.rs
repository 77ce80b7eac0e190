//! Which units read which prefixes, so a change costs a lookup per path
//! segment of its key rather than a scan of every unit.

use std::collections::{HashMap, HashSet};

use crate::resource::Unit;

#[derive(Debug, Default)]
pub struct Index {
    by_prefix: HashMap<String, Vec<String>>,
}

impl Index {
    pub fn build(units: &[Unit]) -> Index {
        let mut by_prefix: HashMap<String, Vec<String>> = HashMap::new();
        for unit in units {
            for prefix in unit.prefixes() {
                let names = by_prefix.entry(prefix.to_string()).or_default();
                if !names.contains(&unit.name) {
                    names.push(unit.name.clone());
                }
            }
        }
        Index { by_prefix }
    }

    /// Units whose keys include `key`: those indexed at `key` or any ancestor.
    pub fn affected<'a>(&'a self, key: &str, out: &mut HashSet<&'a str>) {
        let mut path = key;
        loop {
            if let Some(names) = self.by_prefix.get(path) {
                out.extend(names.iter().map(String::as_str));
            }
            if path == "/" {
                break;
            }
            path = match path.rfind('/') {
                Some(0) => "/",
                Some(i) => &path[..i],
                None => break,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_units_by_any_ancestor_of_a_key() {
        let mut index = Index::default();
        index
            .by_prefix
            .insert("/fabric/peers".into(), vec!["bird".into()]);
        index.by_prefix.insert("/fabric".into(), vec!["all".into()]);
        index.by_prefix.insert("/".into(), vec!["root".into()]);
        let mut out = HashSet::new();
        index.affected("/fabric/peers/a/asn", &mut out);
        let mut names: Vec<_> = out.into_iter().collect();
        names.sort();
        assert_eq!(names, ["all", "bird", "root"]);
        let mut out = HashSet::new();
        index.affected("/fabricx", &mut out);
        assert_eq!(out.into_iter().collect::<Vec<_>>(), ["root"]);
    }
}
