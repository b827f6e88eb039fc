//! `compress.encode` and `compress.decode`: gzip, zstd, bzip2 and xz as streams, with
//! decompression bounded in size and ratio so a bomb is refused, not expanded.

pub mod codec;
pub mod function;

pub use codec::{Codec, Expansion};
