//! The MySQL/MariaDB inbox against a real server (`MYSQL_URL`): the shared
//! inbox suite (`eventbus_tests::suites::inbox`).

eventbus_tests::matrix!(inbox_mysql);
