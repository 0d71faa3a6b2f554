//! Table names from configuration: anything that parses quotes to one
//! identifier per part, so configuration text can never change a statement.
#![no_main]

use eventbus::TableName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(table) = TableName::parse(text) else {
        return;
    };
    for quoted in [table.quoted(), eventbus::mysql::quoted(&table)] {
        let safe = quoted
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.\"`".contains(c));
        assert!(safe, "{text:?} quoted as {quoted:?}");
    }
    assert_eq!(TableName::parse(&text.to_owned()).ok(), Some(table));
});
