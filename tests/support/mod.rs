#![allow(dead_code)]

pub mod fault_proxy;
pub mod stack;
