pub mod alertmanager;
pub mod config;
pub mod fake_chat;
pub mod fake_google;
pub mod kabar;
pub mod logscan;
pub mod postgres;
pub mod tools;
