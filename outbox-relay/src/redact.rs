//! Keeping credentials out of every message: the passwords of URLs in any
//! text, as the eventbus library redacts them.

pub(crate) use eventbus::redact::redact_urls as redact;
