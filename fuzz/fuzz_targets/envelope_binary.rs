//! CloudEvents binary mode, as Kafka (`ce_` headers) and AMQP (`ce-` headers)
//! deliver it: any headers, content type and body decode or fail with an
//! error; whatever decodes survives a round trip through the headers we write.
#![no_main]

use arbitrary::Arbitrary;
use eventbus::Envelope;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Message {
    kafka: bool,
    headers: Vec<(String, Vec<u8>)>,
    content_type: Option<String>,
    body: Vec<u8>,
}

fuzz_target!(|m: Message| {
    let prefix = if m.kafka { "ce_" } else { "ce-" };
    let headers = m.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
    let Ok(envelope) = Envelope::from_binary(prefix, headers, m.content_type.as_deref(), m.body)
    else {
        return;
    };
    let written = envelope.binary_headers(prefix);
    let again = Envelope::from_binary(
        prefix,
        written.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
        envelope.datacontenttype.as_deref(),
        envelope.data.clone(),
    )
    .expect("headers we wrote must decode");
    assert_eq!(again, envelope, "binary-mode round trip changed the event");
});
