//! The MySQL/MariaDB inbox against a real server (`MYSQL_URL`): the shared
//! inbox suite (`eventbus_tests::suites::inbox`).

// The shared scenarios this binary runs: its row in `tests/src/matrix.rs`.
eventbus_tests::matrix!(inbox_mysql);
