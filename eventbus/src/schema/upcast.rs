//! [`Upcasters`]: steps that turn an event's JSON payload from one schema
//! version into the next, chained so that a handler written for the newest
//! version also receives every older message.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::SchemaError;
use crate::event::Event;
use crate::inbox::BoxError;

type Step = Arc<dyn Fn(Value) -> Result<Value, BoxError> + Send + Sync>;

/// Upcasters by event type: for each type, steps from version `n` to `n + 1`
/// on the JSON payload, so that an older message is brought to the version a
/// handler knows (`v1 → v2 → v3`) before it is decoded.
///
/// A consumer takes them through
/// [`ConsumerBuilder::upcast`](crate::consumer::ConsumerBuilder::upcast) (one
/// step at a time) or [`ConsumerBuilder::upcasters`](crate::consumer::ConsumerBuilder::upcasters)
/// (a set shared by several consumers).
///
/// For an event type with no upcaster at all, older messages are decoded with
/// the newest Rust type as they are (which the [schema check](super::Registry::check)
/// makes safe: a new version must be backward compatible). Once a type has an
/// upcaster, the chain must be complete from the oldest version that may still
/// arrive: a missing step is [`UpcastError::MissingStep`], and the consumer
/// dead-letters the message with that reason. A step that needs no change is
/// registered as `Ok`.
///
/// # Examples
///
/// ```
/// use eventbus::schema::Upcasters;
/// use eventbus::Event;
/// use serde::{Deserialize, Serialize};
/// use serde_json::json;
///
/// /// v3: `amount_cents` became `amount` (v2), `currency` is new (v3).
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Debug, PartialEq)]
/// #[event(type = "com.example.order.placed", version = 3, destination = "orders", key = order_id)]
/// struct OrderPlaced { order_id: String, amount: i64, currency: String }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut upcasters = Upcasters::new();
/// upcasters
///     .register::<OrderPlaced>(1, |mut v| {
///         let cents = v["amount_cents"].take();
///         v["amount"] = cents;
///         Ok(v)
///     })?
///     .register::<OrderPlaced>(2, |mut v| {
///         v["currency"] = json!("EUR");
///         Ok(v)
///     })?;
///
/// let v1 = br#"{"order_id":"o-1","amount_cents":990}"#;
/// let order: OrderPlaced = upcasters.decode(1, v1)?;
/// assert_eq!(order, OrderPlaced { order_id: "o-1".into(), amount: 990, currency: "EUR".into() });
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    /// Steps by (event type, version they start from).
    steps: BTreeMap<(String, u32), Step>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                self.steps
                    .keys()
                    .map(|(t, from)| format!("{t} v{from} -> v{}", from + 1)),
            )
            .finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Upcasters::default()
    }

    /// Registers the step of `E`'s payload from version `from` to `from + 1`.
    ///
    /// # Errors
    ///
    /// [`SchemaError::InvalidUpcaster`] if `from` is 0, is not below
    /// `E::VERSION` (there is nothing to upcast to), or already has a step.
    pub fn register<E: Event>(
        &mut self,
        from: u32,
        step: impl Fn(Value) -> Result<Value, BoxError> + Send + Sync + 'static,
    ) -> Result<&mut Self, SchemaError> {
        let invalid = |reason: String| SchemaError::InvalidUpcaster {
            event_type: E::TYPE.to_owned(),
            from,
            reason,
        };
        if from == 0 {
            return Err(invalid("versions start at 1".into()));
        }
        if from >= E::VERSION {
            return Err(invalid(format!(
                "`{}` is at version {}: upcasters go from an older version to the next, \
                 up to it",
                std::any::type_name::<E>(),
                E::VERSION
            )));
        }
        let key = (E::TYPE.to_owned(), from);
        if self.steps.contains_key(&key) {
            return Err(invalid(
                "a step from this version is registered already".into(),
            ));
        }
        self.steps.insert(key, Arc::new(step));
        Ok(self)
    }

    /// Adds every step of `other`.
    ///
    /// # Errors
    ///
    /// [`SchemaError::InvalidUpcaster`] for a step both hold (the steps
    /// before it are added).
    pub(crate) fn merge(&mut self, other: Upcasters) -> Result<(), SchemaError> {
        for (key, step) in other.steps {
            if self.steps.contains_key(&key) {
                return Err(SchemaError::InvalidUpcaster {
                    event_type: key.0,
                    from: key.1,
                    reason: "a step from this version is registered already".into(),
                });
            }
            self.steps.insert(key, step);
        }
        Ok(())
    }

    /// Whether any upcaster is registered for `event_type` (then its chains
    /// must be complete).
    pub fn covers(&self, event_type: &str) -> bool {
        self.steps
            .range((event_type.to_owned(), 0)..=(event_type.to_owned(), u32::MAX))
            .next()
            .is_some()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Brings `value`, a payload of `event_type` at version `from`, to version
    /// `to` through every step in between. `from >= to` returns it unchanged.
    ///
    /// # Errors
    ///
    /// [`UpcastError::MissingStep`] if a step on the way is not registered,
    /// [`UpcastError::StepFailed`] if one fails.
    pub fn upcast(
        &self,
        event_type: &str,
        from: u32,
        to: u32,
        mut value: Value,
    ) -> Result<Value, UpcastError> {
        for version in from..to {
            let step = self
                .steps
                .get(&(event_type.to_owned(), version))
                .ok_or_else(|| UpcastError::MissingStep {
                    event_type: event_type.to_owned(),
                    from,
                    to,
                    missing: version,
                })?;
            value = step(value).map_err(|source| UpcastError::StepFailed {
                event_type: event_type.to_owned(),
                from: version,
                source,
            })?;
        }
        Ok(value)
    }

    /// Decodes `payload`, written with schema `version` of `E`, as the current
    /// `E`: upcast first if `E` has upcasters and `version` is older than
    /// `E::VERSION`, as is otherwise. This is what a consumer does with each
    /// message before its handler sees it.
    ///
    /// # Errors
    ///
    /// [`UpcastError::NotJson`], the errors of [`upcast`](Self::upcast), or
    /// [`UpcastError::Decode`] if the (upcast) payload is not an `E`.
    pub fn decode<E: Event>(&self, version: u32, payload: &[u8]) -> Result<E, UpcastError> {
        let decode_error = |source| UpcastError::Decode {
            event_type: E::TYPE.to_owned(),
            version,
            target: E::VERSION,
            source,
        };
        if version >= E::VERSION || !self.covers(E::TYPE) {
            return serde_json::from_slice(payload).map_err(decode_error);
        }
        let value: Value =
            serde_json::from_slice(payload).map_err(|source| UpcastError::NotJson {
                event_type: E::TYPE.to_owned(),
                version,
                source,
            })?;
        let value = self.upcast(E::TYPE, version, E::VERSION, value)?;
        serde_json::from_value(value).map_err(decode_error)
    }
}

/// Why a message could not be brought to the version its handler knows. The
/// consumer dead-letters such a message at once (retrying cannot help), with
/// this error's text as the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// The chain has a gap: no step from version `missing` to `missing + 1`.
    #[error(
        "cannot upcast `{event_type}` from v{from} to v{to}: no upcaster from v{missing} to v{}",
        missing + 1
    )]
    MissingStep {
        /// The CloudEvents type.
        event_type: String,
        /// The message's version.
        from: u32,
        /// The version the handler knows.
        to: u32,
        /// The version the missing step would start from.
        missing: u32,
    },
    /// A step returned an error.
    #[error("upcasting `{event_type}` from v{from} to v{} failed: {source}", from + 1)]
    StepFailed {
        /// The CloudEvents type.
        event_type: String,
        /// The version the failing step starts from.
        from: u32,
        /// What the step returned.
        #[source]
        source: BoxError,
    },
    /// The payload to upcast is not JSON.
    #[error("payload of `{event_type}` v{version} is not JSON, cannot upcast it: {source}")]
    NotJson {
        /// The CloudEvents type.
        event_type: String,
        /// The message's version.
        version: u32,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// The payload (upcast, if it was older) does not decode as the handler's type.
    #[error(
        "payload does not decode as `{event_type}` v{target} (it was written as v{version}): \
         {source}"
    )]
    Decode {
        /// The CloudEvents type.
        event_type: String,
        /// The message's version.
        version: u32,
        /// The version of the handler's type.
        target: u32,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    struct PlacedV3 {
        order_id: String,
        amount: i64,
        currency: String,
    }

    impl Event for PlacedV3 {
        const TYPE: &'static str = "test.upcast.placed";
        const VERSION: u32 = 3;
        const DESTINATION: &'static str = "orders";
        fn partition_key(&self) -> String {
            self.order_id.clone()
        }
    }

    fn rename(mut v: Value) -> Result<Value, BoxError> {
        let cents = v
            .as_object_mut()
            .and_then(|o| o.remove("amount_cents"))
            .ok_or("v1 payload without amount_cents")?;
        v["amount"] = cents;
        Ok(v)
    }

    fn full() -> Upcasters {
        let mut upcasters = Upcasters::new();
        upcasters
            .register::<PlacedV3>(1, rename)
            .and_then(|u| {
                u.register::<PlacedV3>(2, |mut v| {
                    v["currency"] = json!("EUR");
                    Ok(v)
                })
            })
            .expect("valid steps");
        upcasters
    }

    #[test]
    fn chains_every_step_to_the_current_version() {
        let upcasters = full();
        let v1 = br#"{"order_id":"o-1","amount_cents":990}"#;
        let v2 = br#"{"order_id":"o-2","amount":5}"#;
        let v3 = br#"{"order_id":"o-3","amount":7,"currency":"SEK"}"#;
        let decoded: Vec<PlacedV3> = [(1, &v1[..]), (2, &v2[..]), (3, &v3[..])]
            .into_iter()
            .map(|(version, payload)| upcasters.decode(version, payload).expect("decodes"))
            .collect();
        let expected = |id: &str, amount, currency: &str| PlacedV3 {
            order_id: id.into(),
            amount,
            currency: currency.into(),
        };
        assert_eq!(
            decoded,
            vec![
                expected("o-1", 990, "EUR"),
                expected("o-2", 5, "EUR"),
                expected("o-3", 7, "SEK"),
            ]
        );
        // Steps run in order: v1 → v2 renames, v2 → v3 adds.
        let value = upcasters
            .upcast(
                PlacedV3::TYPE,
                1,
                3,
                json!({ "order_id": "x", "amount_cents": 1 }),
            )
            .expect("upcasts");
        assert_eq!(
            value,
            json!({ "order_id": "x", "amount": 1, "currency": "EUR" })
        );
    }

    #[test]
    fn a_missing_step_is_a_typed_error() {
        let mut upcasters = Upcasters::new();
        upcasters.register::<PlacedV3>(2, Ok).expect("valid step");
        let err = upcasters
            .decode::<PlacedV3>(1, br#"{"order_id":"o-1","amount_cents":1}"#)
            .expect_err("v1 has no step to v2");
        assert!(
            matches!(
                err,
                UpcastError::MissingStep { ref event_type, from: 1, to: 3, missing: 1 }
                    if event_type == PlacedV3::TYPE
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "cannot upcast `test.upcast.placed` from v1 to v3: no upcaster from v1 to v2"
        );
        // v2 is covered, v3 needs nothing.
        assert!(upcasters
            .decode::<PlacedV3>(2, br#"{"order_id":"o","amount":1,"currency":"EUR"}"#)
            .is_ok());
    }

    #[test]
    fn failing_steps_and_bad_payloads_are_typed_errors() {
        let upcasters = full();
        let err = upcasters
            .decode::<PlacedV3>(1, br#"{"order_id":"o-1"}"#)
            .expect_err("the step fails");
        assert!(
            matches!(err, UpcastError::StepFailed { from: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("v1 payload without amount_cents"));
        let err = upcasters
            .decode::<PlacedV3>(1, b"not json")
            .expect_err("not JSON");
        assert!(
            matches!(err, UpcastError::NotJson { version: 1, .. }),
            "{err:?}"
        );
        let err = upcasters
            .decode::<PlacedV3>(2, br#"{"order_id":"o","amount":"x"}"#)
            .expect_err("does not decode");
        assert!(
            matches!(
                err,
                UpcastError::Decode {
                    version: 2,
                    target: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn without_upcasters_older_payloads_decode_as_they_are() {
        let none = Upcasters::new();
        let order: PlacedV3 = none
            .decode(1, br#"{"order_id":"o","amount":1,"currency":"EUR"}"#)
            .expect("backward-compatible payload");
        assert_eq!(order.amount, 1);
        assert!(!none.covers(PlacedV3::TYPE));
    }

    #[test]
    fn registering_rejects_impossible_steps() {
        let mut upcasters = Upcasters::new();
        for from in [0, 3, 4] {
            let err = upcasters
                .register::<PlacedV3>(from, Ok)
                .expect_err("out of range");
            assert!(matches!(err, SchemaError::InvalidUpcaster { .. }), "{err}");
        }
        upcasters.register::<PlacedV3>(1, Ok).expect("first step");
        let err = upcasters
            .register::<PlacedV3>(1, Ok)
            .expect_err("duplicate");
        assert!(err.to_string().contains("registered already"), "{err}");
    }
}
