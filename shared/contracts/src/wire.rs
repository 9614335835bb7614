//! MessagePack encoding shared by every producer and consumer.
//!
//! Structs are written as maps with field names (never positional arrays), so a
//! producer may add an optional field without breaking readers of the same version.
//! The human-readable flag makes `Uuid` a string rather than 16 raw bytes, which keeps
//! a message readable after a generic MessagePack→JSON transcode (gateway, hospital).

use serde::{Serialize, de::DeserializeOwned};

/// The `Content-Type` header value of every mesh message.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// How deeply arrays and maps may nest in a message. Decoding recurses once per level,
/// and a few thousand levels overflow a task's stack (debug builds) and abort the whole
/// process: one hostile message on the bus would take a service down. No contract comes
/// near this (a request's JSON body is at most 128 deep at the gateway, serde_json's
/// limit, and a body that deep is answered `validation_failed`).
pub const MAX_DEPTH: usize = 100;

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

/// Decodes a value written by [`encode`] (or by any MessagePack writer using maps),
/// nested at most [`MAX_DEPTH`] deep.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
    de.set_max_depth(MAX_DEPTH);
    Ok(T::deserialize(&mut de)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `levels` nested one-element arrays around nil.
    fn nested(levels: usize) -> Vec<u8> {
        let mut bytes = vec![0x91; levels];
        bytes.push(0xc0);
        bytes
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        assert!(decode::<serde_json::Value>(&nested(MAX_DEPTH - 1)).is_ok());
        for levels in [MAX_DEPTH + 1, 100_000] {
            let err = decode::<serde::de::IgnoredAny>(&nested(levels)).expect_err("too deep");
            assert!(err.to_string().contains("depth"), "{err}");
        }
    }
}
