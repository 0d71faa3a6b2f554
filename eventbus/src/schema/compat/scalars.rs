//! Numbers, strings and arrays: ranges, lengths and counts.

use std::fmt;

use serde_json::{Map, Value};

use super::alternatives::{Alt, Kind};
use super::walk::Walk;
use super::{ChangeKind, Impact};

impl Walk<'_> {
    pub(super) fn numbers(&mut self, kind: Kind, old: &[Alt], new: &[Alt], path: &str) {
        let span = |alts: &[Alt]| -> Range {
            alts.iter()
                .map(|a| numeric_range(kind, &a.schema))
                .reduce(Range::hull)
                .unwrap_or(Range::ANY)
        };
        let (o, n) = (span(old), span(new));
        let format = |alts: &[Alt]| -> Option<String> {
            alts.first()
                .and_then(|a| a.schema.get("format"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (of, nf) = (format(old), format(new));
        let backward = Impact::when(!n.contains(&o), || {
            format!("old messages may carry values in {o}, the new schema accepts {n}")
        });
        let forward = Impact::when(!o.contains(&n), || {
            format!("new messages may carry values in {n}, readers of the old schema accept {o}")
        });
        if of != nf {
            self.push(
                path,
                ChangeKind::FormatChanged { old: of, new: nf },
                backward,
                forward,
            );
        } else if o != n {
            self.push(
                path,
                ChangeKind::ConstraintChanged {
                    constraint: "range".to_owned(),
                    old: o.to_string(),
                    new: n.to_string(),
                },
                backward,
                forward,
            );
        }
    }

    pub(super) fn string(&mut self, o: &Map<String, Value>, n: &Map<String, Value>, path: &str) {
        let text =
            |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        for (keyword, constraint) in [("format", false), ("pattern", true)] {
            let (ov, nv) = (text(o, keyword), text(n, keyword));
            if ov == nv {
                continue;
            }
            let backward = Impact::when(nv.is_some(), || {
                format!(
                    "old messages need not match the new {keyword} `{}`",
                    nv.as_deref().unwrap_or_default()
                )
            });
            let forward = Impact::when(ov.is_some(), || {
                format!(
                    "readers of the old schema require {keyword} `{}`",
                    ov.as_deref().unwrap_or_default()
                )
            });
            let kind = if constraint {
                ChangeKind::ConstraintChanged {
                    constraint: keyword.to_owned(),
                    old: ov.unwrap_or_else(|| "none".to_owned()),
                    new: nv.unwrap_or_else(|| "none".to_owned()),
                }
            } else {
                ChangeKind::FormatChanged { old: ov, new: nv }
            };
            self.push(path, kind, backward, forward);
        }
        self.count_range(o, n, "minLength", "maxLength", "length", path);
    }

    pub(super) fn array(
        &mut self,
        o: &Map<String, Value>,
        n: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        let items = |m: &Map<String, Value>| m.get("items").cloned().unwrap_or(Value::Bool(true));
        if o.contains_key("items") || n.contains_key("items") {
            self.node(&items(o), &items(n), &format!("{path}[]"), depth + 1);
        }
        let prefix = |m: &Map<String, Value>| -> Vec<Value> {
            m.get("prefixItems")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        // Tuple positions only one side has are covered by the item counts.
        for (i, (op, np)) in prefix(o).iter().zip(prefix(n).iter()).enumerate() {
            self.node(op, np, &format!("{path}[{i}]"), depth + 1);
        }
        self.count_range(o, n, "minItems", "maxItems", "item count", path);
        let unique = |m: &Map<String, Value>| {
            m.get("uniqueItems")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let (ou, nu) = (unique(o), unique(n));
        if ou != nu {
            self.push(
                path,
                ChangeKind::ConstraintChanged {
                    constraint: "uniqueItems".to_owned(),
                    old: ou.to_string(),
                    new: nu.to_string(),
                },
                Impact::when(nu, || "old messages may repeat items".to_owned()),
                Impact::when(ou, || {
                    "readers of the old schema reject repeated items".to_owned()
                }),
            );
        }
    }

    pub(super) fn count_range(
        &mut self,
        o: &Map<String, Value>,
        n: &Map<String, Value>,
        min: &str,
        max: &str,
        constraint: &str,
        path: &str,
    ) {
        let range = |m: &Map<String, Value>| Range {
            lo: m.get(min).and_then(Value::as_f64),
            hi: m.get(max).and_then(Value::as_f64),
        };
        let (or, nr) = (range(o), range(n));
        if or == nr {
            return;
        }
        let backward = Impact::when(!nr.contains(&or), || {
            format!("old messages may have a {constraint} in {or}, the new schema accepts {nr}")
        });
        let forward = Impact::when(!or.contains(&nr), || {
            format!("new messages may have a {constraint} in {nr}, readers of the old schema accept {or}")
        });
        self.push(
            path,
            ChangeKind::ConstraintChanged {
                constraint: constraint.to_owned(),
                old: or.to_string(),
                new: nr.to_string(),
            },
            backward,
            forward,
        );
    }
}

/// An inclusive numeric interval; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Range {
    pub(super) lo: Option<f64>,
    pub(super) hi: Option<f64>,
}

impl Range {
    const ANY: Range = Range { lo: None, hi: None };

    pub(super) fn contains(&self, other: &Range) -> bool {
        let lo = match (self.lo, other.lo) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a <= b,
        };
        let hi = match (self.hi, other.hi) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a >= b,
        };
        lo && hi
    }

    pub(super) fn hull(self, other: Range) -> Range {
        Range {
            lo: self.lo.zip(other.lo).map(|(a, b)| a.min(b)),
            hi: self.hi.zip(other.hi).map(|(a, b)| a.max(b)),
        }
    }

    pub(super) fn narrow(self, lo: Option<f64>, hi: Option<f64>) -> Range {
        Range {
            lo: match (self.lo, lo) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            hi: match (self.hi, hi) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<f64>, inf: &str| v.map_or_else(|| inf.to_owned(), |v| format!("{v}"));
        write!(f, "[{}, {}]", show(self.lo, "-inf"), show(self.hi, "inf"))
    }
}

/// The values a number schema accepts: its `format`'s range narrowed by
/// `minimum`/`maximum` (and their exclusive forms).
pub(super) fn numeric_range(kind: Kind, schema: &Map<String, Value>) -> Range {
    let format = schema.get("format").and_then(Value::as_str).unwrap_or("");
    let bits = |n: i32| 2f64.powi(n);
    let by_format = match format {
        "int8" => Range {
            lo: Some(-bits(7)),
            hi: Some(bits(7) - 1.0),
        },
        "int16" => Range {
            lo: Some(-bits(15)),
            hi: Some(bits(15) - 1.0),
        },
        "int32" => Range {
            lo: Some(-bits(31)),
            hi: Some(bits(31) - 1.0),
        },
        "int64" | "int" => Range {
            lo: Some(-bits(63)),
            hi: Some(bits(63) - 1.0),
        },
        "int128" => Range {
            lo: Some(-bits(127)),
            hi: Some(bits(127) - 1.0),
        },
        "uint8" => Range {
            lo: Some(0.0),
            hi: Some(bits(8) - 1.0),
        },
        "uint16" => Range {
            lo: Some(0.0),
            hi: Some(bits(16) - 1.0),
        },
        "uint32" => Range {
            lo: Some(0.0),
            hi: Some(bits(32) - 1.0),
        },
        "uint64" | "uint" => Range {
            lo: Some(0.0),
            hi: Some(bits(64) - 1.0),
        },
        "uint128" => Range {
            lo: Some(0.0),
            hi: Some(bits(128) - 1.0),
        },
        "float" if kind == Kind::Number => Range {
            lo: Some(f64::from(f32::MIN)),
            hi: Some(f64::from(f32::MAX)),
        },
        _ => Range::ANY,
    };
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    // For integers an exclusive bound is the next integer in; for numbers the
    // difference does not matter to a reader's type.
    let step = if kind == Kind::Integer { 1.0 } else { 0.0 };
    let lo = [num("minimum"), num("exclusiveMinimum").map(|v| v + step)]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    let hi = [num("maximum"), num("exclusiveMaximum").map(|v| v - step)]
        .into_iter()
        .flatten()
        .reduce(f64::min);
    by_format.narrow(lo, hi)
}
