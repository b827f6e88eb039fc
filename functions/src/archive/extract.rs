//! `archive.extract`. An archive is a list of names and sizes its author chose: every
//! name is checked like an object key (no `..`, no absolute path), and members are
//! counted, sized and measured against their compressed size as they are read, so a
//! bomb stops at the limit. Archives inside archives are members like any other: they
//! are not opened (a pipeline that feeds them back meets the same limits at each level).

use std::io::Read;

use serde::Deserialize;

use crate::compress::codec::{self, Expansion, RATIO_GRACE};
use crate::stream::{self, io_error, Input, Outputs, Sink};
use crate::template::KeyTemplate;
use crate::units::ByteSize;
use crate::{BuildError, Context, Emitter, Function, FunctionError, FunctionSpec, Item, Metadata, Param, Payload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Auto,
    Zip,
    Tar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractParams {
    #[serde(default = "auto")]
    format: Kind,
    url: Option<String>,
    key: Option<String>,
    #[serde(default = "ten_thousand")]
    max_members: usize,
    max_member_bytes: Option<ByteSize>,
    #[serde(default = "four_gib")]
    max_total_bytes: ByteSize,
    #[serde(default = "hundred")]
    max_ratio: u64,
}

fn auto() -> Kind {
    Kind::Auto
}
fn ten_thousand() -> usize {
    10_000
}
fn four_gib() -> ByteSize {
    ByteSize(4 << 30)
}
fn hundred() -> u64 {
    100
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "archive.extract",
        "Fan out one item per member of a zip or tar(.gz/.zst/.bz2/.xz) archive, streamed, with limits on \
         member count, sizes and compression ratio; member names are checked like keys.",
        &[
            Param {
                name: "key",
                kind: "string (template)",
                default: Some("none: pass each member on as bytes"),
                doc: "Key template to write each member to, e.g. \"unpacked/{stem}/{attr.member}\". \
                      {attr.member} is the member's path in the archive.",
            },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to write to.",
            },
            Param {
                name: "format",
                kind: "\"auto\" | \"zip\" | \"tar\"",
                default: Some("\"auto\""),
                doc: "auto: zip by its magic bytes, else tar (after any compression codec).",
            },
            Param { name: "max_members", kind: "integer", default: Some("10000"), doc: "The most members." },
            Param {
                name: "max_member_bytes",
                kind: "size",
                default: Some("max_input_bytes"),
                doc: "The largest member.",
            },
            Param {
                name: "max_total_bytes",
                kind: "size",
                default: Some("\"4GiB\""),
                doc: "The most bytes all members may hold together.",
            },
            Param {
                name: "max_ratio",
                kind: "integer",
                default: Some("100"),
                doc: "The most a member (or a compressed tar) may expand per compressed byte, past 16 MiB.",
            },
        ],
        |p: ExtractParams| {
            if p.max_ratio == 0 || p.max_members == 0 {
                return Err(BuildError::param(
                    if p.max_ratio == 0 { "max_ratio" } else { "max_members" },
                    "must be at least 1",
                ));
            }
            let key = p
                .key
                .as_deref()
                .map(KeyTemplate::parse)
                .transpose()
                .map_err(|e| BuildError::param("key", e.message))?;
            Ok(Extract {
                kind: p.format,
                url: p.url,
                key,
                max_members: p.max_members,
                max_member_bytes: p.max_member_bytes.map(|s| s.0),
                max_total_bytes: p.max_total_bytes.0,
                max_ratio: p.max_ratio,
            })
        },
    )
}

pub struct Extract {
    kind: Kind,
    url: Option<String>,
    key: Option<KeyTemplate>,
    max_members: usize,
    max_member_bytes: Option<u64>,
    max_total_bytes: u64,
    max_ratio: u64,
}

/// The limits and output of one extraction, on the stage's thread.
struct Job {
    name: String,
    base: Metadata,
    ctx: Context,
    key: Option<KeyTemplate>,
    url: Option<String>,
    max_members: usize,
    max_member_bytes: u64,
    max_total_bytes: u64,
    max_ratio: u64,
    members: usize,
    total: u64,
}

impl Job {
    fn refuse(&self, why: impl std::fmt::Display) -> FunctionError {
        FunctionError::permanent(format!("{}: {why}", self.name))
    }

    /// Checks a member before it is read: its name, the count, its declared size.
    fn admit(&mut self, member: &str, declared: u64) -> Result<(), FunctionError> {
        crate::store::check_key(member).map_err(|why| self.refuse(format!("member {member:?} is unsafe: {why}")))?;
        self.members += 1;
        if self.members > self.max_members {
            return Err(self.refuse(format!("more than {} members (max_members)", self.max_members)));
        }
        if declared > self.max_member_bytes {
            return Err(self.refuse(format!(
                "member {member:?} is {declared} bytes, over max_member_bytes = {}",
                self.max_member_bytes
            )));
        }
        Ok(())
    }

    /// Reads one member to its object or item, counting what it really holds.
    fn member(
        &mut self,
        member: &str,
        reader: &mut dyn Read,
        compressed: Option<u64>,
        outputs: &mut Outputs,
    ) -> Result<(), FunctionError> {
        let budget = self.max_member_bytes.min(self.max_total_bytes.saturating_sub(self.total));
        let mut meta = self.base.clone();
        meta.attributes.insert("member".into(), member.to_string());
        meta.variant = Some(member.to_string());
        let mut counter = Limit { inner: reader, read: 0, budget, compressed, max_ratio: self.max_ratio };
        let payload = match &self.key {
            Some(key) => {
                let rendered = key.render(&Item::new(Payload::Empty, meta.clone()), &self.ctx)?;
                let mut out = outputs.open(rendered.clone()).map_err(|e| io_error(&rendered, e))?;
                let copied = std::io::copy(&mut counter, &mut out);
                self.check(member, copied.map(|_| ()))?;
                let size = out.finish().map_err(|e| io_error(&rendered, e))?;
                meta.attributes.insert("output_key".into(), rendered.clone());
                let url = self.url.clone().or_else(|| self.base.source_url.clone());
                Payload::Json(serde_json::json!({ "url": url, "key": rendered, "size": size, "member": member }))
            }
            None => {
                let mut bytes = Vec::new();
                let read = counter.read_to_end(&mut bytes);
                self.check(member, read.map(|_| ()))?;
                Payload::Bytes(bytes.into())
            }
        };
        self.total += counter.read;
        outputs.emit(Item::new(payload, meta)).map_err(|e| io_error(member, e))
    }

    fn check(&self, member: &str, result: std::io::Result<()>) -> Result<(), FunctionError> {
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                Err(self.refuse(format!("member {member:?} {e}")))
            }
            Err(e) => Err(io_error(&format!("{} member {member:?}", self.name), e)),
        }
    }

    fn zip(&mut self, mut input: Box<dyn Read + Send>, outputs: &mut Outputs) -> Result<(), FunctionError> {
        // The zip directory is at the end: the archive is read whole, within max_input_bytes.
        let limit = self.ctx.limits.max_input_bytes;
        let mut bytes = Vec::new();
        (&mut input).take(limit + 1).read_to_end(&mut bytes).map_err(|e| io_error(&self.name, e))?;
        if bytes.len() as u64 > limit {
            return Err(self.refuse(format!("over max_input_bytes = {limit} (zip archives are read whole)")));
        }
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| self.refuse(format!("not a readable zip: {e}")))?;
        if archive.len() > self.max_members {
            return Err(self.refuse(format!("{} members, over max_members = {}", archive.len(), self.max_members)));
        }
        // Every name, size and ratio is checked before the first member is written:
        // a refused zip leaves nothing behind.
        let mut members = Vec::new();
        for index in 0..archive.len() {
            let file = archive.by_index_raw(index).map_err(|e| self.refuse(format!("member {index}: {e}")))?;
            let name = match file.name() {
                Ok(name) => name.to_string(),
                Err(e) => return Err(self.refuse(format!("member {index} has an unreadable name: {e}"))),
            };
            if file.is_dir() {
                continue;
            }
            let member = name.trim_end_matches('/').to_string();
            if file.is_symlink() {
                return Err(self.refuse(format!("member {member:?} is a symbolic link")));
            }
            let (declared, compressed) = (file.size(), file.compressed_size());
            drop(file);
            if declared > RATIO_GRACE && declared / compressed.max(1) > self.max_ratio {
                return Err(self.refuse(format!(
                    "member {member:?} expands more than {}:1 ({declared} bytes from {compressed}; max_ratio)",
                    self.max_ratio
                )));
            }
            self.admit(&member, declared)?;
            members.push((index, member, compressed));
        }
        for (index, member, compressed) in members {
            let mut file = archive.by_index(index).map_err(|e| self.refuse(format!("member {member:?}: {e}")))?;
            self.member(&member, &mut file, Some(compressed), outputs)?;
        }
        Ok(())
    }

    fn tar(&mut self, input: Box<dyn Read + Send>, outputs: &mut Outputs) -> Result<(), FunctionError> {
        let mut archive = tar::Archive::new(input);
        let entries = archive.entries().map_err(|e| self.refuse(format!("not a readable tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| io_error(&format!("{}: not a readable tar", self.name), e))?;
            let kind = entry.header().entry_type();
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let member = path.trim_end_matches('/').to_string();
            if kind.is_dir() || kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                continue;
            }
            if !kind.is_file() {
                return Err(self.refuse(format!("member {member:?} is not a regular file ({kind:?})")));
            }
            let declared = entry.header().size().unwrap_or(u64::MAX);
            self.admit(&member, declared)?;
            self.member(&member, &mut entry, None, outputs)?;
        }
        if self.members == 0 {
            return Err(self.refuse("no members: an empty or unreadable archive"));
        }
        Ok(())
    }
}

/// A member being read: stops past its budget (its own size, the total left) and, for
/// a zip member, past `max_ratio` times its compressed size.
struct Limit<'a> {
    inner: &'a mut dyn Read,
    read: u64,
    budget: u64,
    compressed: Option<u64>,
    max_ratio: u64,
}

impl Read for Limit<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.budget {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("holds more than {} bytes (max_member_bytes or max_total_bytes)", self.budget),
            ));
        }
        if let Some(compressed) = self.compressed {
            if self.read > RATIO_GRACE && self.read / compressed.max(1) > self.max_ratio {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    format!("expands more than {}:1 (max_ratio)", self.max_ratio),
                ));
            }
        }
        Ok(n)
    }
}

impl Extract {
    async fn run(&self, item: Item, ctx: &Context, emitter: Option<&Emitter>) -> Result<Vec<Item>, FunctionError> {
        let name = item.meta.key.clone().unwrap_or_else(|| item.describe());
        let bucket = match &self.key {
            Some(_) => Some(crate::object::target_bucket(self.url.as_deref(), &item, ctx)?),
            None => None,
        };
        let input = Input::of(&item, ctx)?;
        let mut job = Job {
            name,
            base: item.meta.clone(),
            ctx: ctx.clone(),
            key: self.key.clone(),
            url: self.url.clone(),
            max_members: self.max_members,
            max_member_bytes: self.max_member_bytes.unwrap_or(ctx.limits.max_input_bytes),
            max_total_bytes: self.max_total_bytes,
            max_ratio: self.max_ratio,
            members: 0,
            total: 0,
        };
        let kind = self.kind;
        let limits = Expansion { max_bytes: self.max_total_bytes.saturating_add(1 << 20), max_ratio: self.max_ratio };
        let ((), produced) = stream::run(input, Sink { bucket, emitter }, move |reader, mut outputs| {
            let mut reader = std::io::BufReader::with_capacity(64 << 10, reader);
            let head = std::io::BufRead::fill_buf(&mut reader).map_err(|e| io_error(&job.name, e))?.to_vec();
            let is_zip = head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06");
            match kind {
                Kind::Zip => job.zip(Box::new(reader), &mut outputs),
                Kind::Auto if is_zip => job.zip(Box::new(reader), &mut outputs),
                Kind::Auto | Kind::Tar => {
                    let (reader, _) =
                        codec::open(reader, None, limits, &job.name).map_err(|e| io_error(&job.name, e))?;
                    job.tar(reader, &mut outputs)
                }
            }
        })
        .await?;
        Ok(produced.items)
    }
}

#[async_trait::async_trait]
impl Function for Extract {
    fn reads_source(&self) -> bool {
        true
    }

    fn streams(&self) -> bool {
        true
    }

    fn writes(&self) -> Vec<crate::Output> {
        self.key.as_ref().map(|key| crate::object::output(&self.url, key)).unwrap_or_default()
    }

    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        self.run(item, ctx, None).await
    }

    async fn invoke_streaming(&self, item: Item, ctx: &Context, out: &Emitter) -> Result<(), FunctionError> {
        self.run(item, ctx, Some(out)).await.map(|_| ())
    }
}
