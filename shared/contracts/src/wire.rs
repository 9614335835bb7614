//! MessagePack encoding shared by every producer and consumer.
//!
//! Structs are written as maps with field names (never positional arrays), so a
//! producer may add an optional field without breaking readers of the same version.
//! The human-readable flag makes `Uuid` a string rather than 16 raw bytes, which keeps
//! a message readable after a generic MessagePack→JSON transcode (gateway, hospital).

use serde::{Serialize, de::DeserializeOwned};

/// The `Content-Type` header value of every mesh message.
pub const CONTENT_TYPE: &str = "application/msgpack";

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Encodes a value as named-field MessagePack.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::with_capacity(128);
    let mut ser = rmp_serde::Serializer::new(&mut buf)
        .with_struct_map()
        .with_human_readable();
    value.serialize(&mut ser)?;
    Ok(buf)
}

/// Decodes a value written by [`encode`] (or by any MessagePack writer using maps).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
    Ok(T::deserialize(&mut de)?)
}
