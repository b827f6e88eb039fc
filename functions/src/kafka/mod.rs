//! Kafka outputs (cargo feature `kafka`, on in the `weir` binary): [`RecordProducer`],
//! an idempotent producer whose sends complete only when the broker has the record,
//! and the `kafka.produce` function built on it. Off by default, so a crate that
//! only writes functions does not build librdkafka.

pub mod produce;
mod producer;

pub use producer::{Delivered, LogToTracing, Outgoing, RecordProducer, RESERVED};

use rdkafka::error::KafkaError;

/// A librdkafka error as a message that never carries an option's value: rdkafka's
/// own text for a refused option is `Invalid value "…" for configuration property`,
/// and a misspelt `sasl.pasword` would print the password. Every configured value is
/// masked, whatever the error.
pub fn describe_error(error: &KafkaError, options: &[(String, String)]) -> String {
    let text = match error {
        KafkaError::ClientConfig(_, description, key, _) => format!("librdkafka option {key:?}: {description}"),
        other => other.to_string(),
    };
    mask(text, options.iter().map(|(_, value)| value.as_str()))
}

/// `text` with every occurrence of `values` (of three characters or more; shorter ones
/// are flags and numbers, and masking them would garble the message) replaced by `***`.
pub fn mask<'a>(text: String, values: impl IntoIterator<Item = &'a str>) -> String {
    values.into_iter().filter(|v| v.chars().count() >= 3).fold(text, |text, value| text.replace(value, "***"))
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;

    #[test]
    fn a_refused_option_never_shows_its_value() {
        let options = vec![
            ("sasl.pasword".to_string(), "hunter2-secret".to_string()),
            ("acks".to_string(), "hunter3-secret".to_string()),
        ];
        for option in &options {
            let mut config = ClientConfig::new();
            config.set(&option.0, &option.1);
            let error = config.create_native_config().err().expect("librdkafka refuses it");
            assert!(error.to_string().contains(&option.1), "rdkafka's own text shows the value: {error}");
            let described = super::describe_error(&error, &options);
            assert!(!described.contains("secret"), "{described}");
            assert!(described.contains(&option.0), "{described}");
        }
    }
}
