//! The SQLite inbox against real database files: the shared inbox suite
//! (`eventbus_tests::suites::inbox`, also run on PostgreSQL and MySQL).

eventbus_tests::matrix!(inbox_sqlite);
