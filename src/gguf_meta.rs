//! GGUF metadata values read as the integers and strings r2m needs, with errors that name the file
//! and the key: shared by the model loader (`model::load::gguf`) and the tokenizer.
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use std::path::Path;

pub fn meta_int(path: &Path, key: &str, v: &gguf_file::Value) -> Result<i64> {
    use gguf_file::Value as V;
    Ok(match v {
        V::U8(x) => *x as i64,
        V::I8(x) => *x as i64,
        V::U16(x) => *x as i64,
        V::I16(x) => *x as i64,
        V::U32(x) => *x as i64,
        V::I32(x) => *x as i64,
        V::U64(x) => *x as i64,
        V::I64(x) => *x,
        V::Bool(b) => *b as i64,
        other => return Err(Error::parse(path, format!("GGUF metadata '{key}' is {other:?}, expected an integer"))),
    })
}

pub fn meta_str<'a>(path: &Path, key: &str, v: &'a gguf_file::Value) -> Result<&'a str> {
    match v {
        gguf_file::Value::String(s) => Ok(s),
        other => Err(Error::parse(path, format!("GGUF metadata '{key}' is {:?}, expected a string", other.value_type()))),
    }
}
