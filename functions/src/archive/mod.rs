//! `archive.extract`: zip and tar (plain, or gzip/zstd/bzip2/xz-compressed) into one
//! item per member, as a streaming fan-out.

pub mod extract;
