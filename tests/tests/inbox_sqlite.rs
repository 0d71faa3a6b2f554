//! The SQLite inbox against real database files: the shared inbox suite
//! (`eventbus_tests::suites::inbox`, also run on PostgreSQL and MySQL).

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(inbox_sqlite);
