//! Helpers shared by integration tests (`mod support;` in each test file).
#![allow(dead_code)]

pub mod verify;
