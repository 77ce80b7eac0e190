//! The env source, with confd's mapping: the key `/myapp/db/url` is the
//! variable `MYAPP_DB_URL`. Reads the process environment, nothing else.

use crate::store::{normalize_key, Store};

/// The variable name for a key: `/myapp/db/url` → `MYAPP_DB_URL`.
pub fn var_name(key: &str) -> String {
    key.trim_matches('/').replace('/', "_").to_uppercase()
}

/// The key for a variable name: `MYAPP_DB_URL` → `/myapp/db/url`
/// (normalised, so `A__B_` is `/a/b`).
pub fn key_for(var: &str) -> String {
    normalize_key(&var.to_lowercase().replace('_', "/"))
}

/// Every variable whose name starts with the variable name of one of
/// `prefixes`, as keys.
pub fn load(prefixes: &[String]) -> Store {
    load_from(std::env::vars(), prefixes)
}

pub fn load_from(vars: impl IntoIterator<Item = (String, String)>, prefixes: &[String]) -> Store {
    let wanted: Vec<String> = prefixes.iter().map(|p| var_name(p)).collect();
    vars.into_iter()
        .filter(|(name, _)| wanted.iter().any(|w| name.starts_with(w.as_str())))
        .map(|(name, value)| (key_for(&name), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_variables_map_as_in_confd() {
        assert_eq!(var_name("/myapp/db/url"), "MYAPP_DB_URL");
        assert_eq!(key_for("MYAPP_DB_URL"), "/myapp/db/url");
    }

    #[test]
    fn only_variables_under_the_requested_prefixes_are_read() {
        let vars = [
            ("MYAPP_DB_URL", "pg://x"),
            ("MYAPP_PORT", "80"),
            ("OTHER", "y"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let store = load_from(vars, &["/myapp/db".to_string()]);
        assert_eq!(
            store.iter().collect::<Vec<_>>(),
            [("/myapp/db/url", "pg://x")]
        );
        // The root prefix means every variable, as confd's "/" key does.
        assert_eq!(
            load_from([("A".into(), "1".into())], &["/".to_string()]).len(),
            1
        );
    }
}
