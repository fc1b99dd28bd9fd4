pub mod alertmanager;
pub mod fake_chat;
pub mod kabar;
pub mod tools;
