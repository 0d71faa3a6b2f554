//! CloudEvents JSON (structured mode, as on SQS and in dead letters): any
//! bytes decode or fail with an error, never a panic; whatever decodes
//! survives an encode/decode round trip unchanged.
#![no_main]

use eventbus::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_json(data) {
        let again = Envelope::from_json(&envelope.to_json())
            .expect("an envelope we encoded must decode");
        assert_eq!(again, envelope, "structured JSON round trip changed the event");
    }
});
