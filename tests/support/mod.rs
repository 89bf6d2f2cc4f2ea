#![allow(dead_code)]

pub mod deagg;
pub mod fault_proxy;
pub mod stack;
