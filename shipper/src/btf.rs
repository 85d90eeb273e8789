//! TEMPORARY STUB (replaced by the real parser).
#![allow(missing_docs, unused)]
#[derive(Debug)]
pub struct BtfError(String);
impl std::fmt::Display for BtfError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) } }
impl std::error::Error for BtfError {}
pub struct Btf;
impl Btf {
    pub fn from_sys_fs() -> Result<Btf, BtfError> { Err(BtfError("stub".into())) }
    pub fn parse(_: &[u8]) -> Result<Btf, BtfError> { Err(BtfError("stub".into())) }
    pub fn field_offset(&self, _: &str, _: &str) -> Result<u32, BtfError> { todo!() }
    pub fn func_param_index(&self, _: &str, _: &str) -> Result<usize, BtfError> { todo!() }
    pub fn func_param_count(&self, _: &str) -> Result<usize, BtfError> { todo!() }
}
