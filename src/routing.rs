//! Which spaces a notification goes to: by its `receiver` field, or by the space named in
//! the URL. It must not look at alerts, episodes or templates.

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("unknown space {name:?}; configured spaces: {}", known.join(", "))]
    UnknownSpace { name: String, known: Vec<String> },
    #[error("no space lists receiver {name:?}; receivers configured: {}", known.join(", "))]
    UnknownReceiver { name: String, known: Vec<String> },
}

impl RoutingError {
    /// What the operator should do about it.
    pub(crate) fn hint(&self) -> String {
        match self {
            RoutingError::UnknownSpace { .. } => {
                "POST /alerts/{space} takes a space name from kabar's config; POST /alerts routes by the payload's receiver".to_owned()
            }
            RoutingError::UnknownReceiver { name, .. } if name.contains('/') => format!(
                "receivers from prometheus-operator's AlertmanagerConfig are named namespace/config/receiver: add {name:?} to a space's receivers, or post to /alerts/{{space}}"
            ),
            RoutingError::UnknownReceiver { name, .. } => format!(
                "add {name:?} to a space's receivers list in kabar's config, or post to /alerts/{{space}}"
            ),
        }
    }
}

/// The names of the spaces to deliver to, in config order.
pub(crate) fn route(
    config: &Config,
    receiver: &str,
    explicit_space: Option<&str>,
) -> Result<Vec<String>, RoutingError> {
    match explicit_space {
        Some(name) if config.spaces.contains_key(name) => Ok(vec![name.to_owned()]),
        Some(name) => Err(RoutingError::UnknownSpace {
            name: name.to_owned(),
            known: config.spaces.keys().cloned().collect(),
        }),
        None => {
            let spaces: Vec<String> = config
                .spaces_for_receiver(receiver)
                .map(|s| s.name.clone())
                .collect();
            if spaces.is_empty() {
                Err(RoutingError::UnknownReceiver {
                    name: receiver.to_owned(),
                    known: config
                        .receiver_names()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                })
            } else {
                Ok(spaces)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            "spaces:\n  ops: {dry_run: true, receivers: [gchat, 'monitoring/cfg/gchat']}\n  dev: {dry_run: true, receivers: [gchat]}\n  db: {dry_run: true}\n",
            Path::new("."),
            &|_| None,
        )
        .expect("valid")
    }

    #[test]
    fn receiver_fans_out_to_every_listing_space() {
        assert_eq!(
            route(&config(), "gchat", None),
            Ok(vec!["dev".to_owned(), "ops".to_owned()])
        );
        assert_eq!(route(&config(), "db", None), Ok(vec!["db".to_owned()]));
    }

    #[test]
    fn explicit_space_ignores_the_receiver() {
        assert_eq!(
            route(&config(), "whatever", Some("db")),
            Ok(vec!["db".to_owned()])
        );
    }

    #[test]
    fn unknown_names_list_what_exists_with_a_hint() {
        let err = route(&config(), "x", Some("nope")).expect_err("unknown space");
        assert!(err.to_string().contains("db, dev, ops"), "{err}");
        let err = route(&config(), "monitoring/other/gchat", None).expect_err("unknown receiver");
        assert!(err.to_string().contains("monitoring/cfg/gchat"), "{err}");
        assert!(
            err.hint().contains("namespace/config/receiver"),
            "{}",
            err.hint()
        );
        let err = route(&config(), "plain", None).expect_err("unknown receiver");
        assert!(!err.hint().contains("namespace/config"), "{}", err.hint());
    }
}
