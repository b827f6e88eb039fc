//! `compress.decode`, `compress.encode` and `archive.extract` through the engine:
//! archives fan out to one object per member, compressed CSVs convert, and every
//! hostile archive or stream (truncated, a bomb, `../` members, nested zips) is a
//! one-line dead letter while the engine goes on.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{dead_letters, wait_for, Sandbox};
use weir_engine::Engine;
use weir_functions::Registry;

const WAIT: Duration = Duration::from_secs(120);

fn engine(sandbox: &Sandbox) -> Engine {
    Engine::new(Registry::builtin()).state_dir(sandbox.state()).grace(Duration::from_secs(10))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *bytes).unwrap();
    }
    gzip(&builder.into_inner().unwrap())
}

/// A zip of `members`, names written as given (even `../evil`).
fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in members {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

const EXTRACT: &str = r#"
name = "unpack"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
include = ["*.zip", "*.tar.gz", "*.tgz"]
settle = "200ms"
[retry]
max_attempts = 1
dead_letter = "{bucket}/dlq"
[[step]]
name = "members"
function = "archive.extract"
# Members land back under inbox/, where only archives trigger: a nested archive is
# extracted as an event of its own, under the same limits.
key = "inbox/unpacked/{stem}/{attr.member}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_fan_out_to_one_object_per_member() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("unpack", EXTRACT);
    sandbox.drop_file("inbox/batch.tar.gz", &tar_gz(&[("a.csv", b"x\n1\n"), ("sub/b.csv", b"x\n2\n")]));
    sandbox.drop_file(
        "inbox/photos.zip",
        &zip(&[("c.txt", b"three"), ("d/e.txt", b"four"), ("inner.zip", &zip(&[("f.txt", b"five")]))]),
    );
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("unpack").unwrap().executor.clone();
    wait_for(WAIT, "three archives extracted", || stats.events_done.load(Ordering::SeqCst) == 3).await;
    running.stop().await.unwrap();
    let read = |key: &str| std::fs::read_to_string(sandbox.bucket().join("inbox/unpacked").join(key)).unwrap();
    assert_eq!(read("batch.tar/a.csv"), "x\n1\n");
    assert_eq!(read("batch.tar/sub/b.csv"), "x\n2\n");
    assert_eq!(read("photos/c.txt"), "three");
    assert_eq!(read("photos/d/e.txt"), "four");
    assert_eq!(read("inner/f.txt"), "five", "the nested zip was extracted as its own event");
    assert_eq!(stats.events_dead_lettered.load(Ordering::SeqCst), 0);
}

const CSV_GZ: &str = r#"
name = "gz"
[trigger]
kind = "object_store"
url = "{bucket}"
prefix = "inbox/"
include = ["*.gz"]
settle = "200ms"
[retry]
max_attempts = 1
dead_letter = "{bucket}/dlq"
[[step]]
name = "plain"
function = "compress.decode"
key = "plain/{stem}"
[[step]]
name = "table"
function = "table.convert"
format = "json"
key = "json/{stem}.jsonl"
[[step]]
name = "packed"
function = "compress.encode"
format = "zstd"
key = "zstd/{stem}.zst"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_inputs_decode_convert_and_encode_and_bombs_are_refused() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("gz", CSV_GZ);
    let csv = b"year,n\n2013,1\n2014,2\n".to_vec();
    let good = gzip(&csv);
    sandbox.drop_file("inbox/good.csv.gz", &good);
    let packed = gzip(&b"a,b\n1,2\n".repeat(5000));
    sandbox.drop_file("inbox/truncated.csv.gz", &packed[..packed.len() / 2]);
    // 1 GiB of zeros in about 1 MB.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::copy(&mut std::io::repeat(0).take(1 << 30), &mut bomb).unwrap();
    sandbox.drop_file("inbox/bomb.csv.gz", &bomb.finish().unwrap());
    sandbox.drop_file("inbox/not-gzip.gz", b"year,n\n2013,1\n");

    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("gz").unwrap().executor.clone();
    wait_for(WAIT, "all four through", || {
        stats.events_done.load(Ordering::SeqCst) + stats.events_dead_lettered.load(Ordering::SeqCst) == 4
    })
    .await;
    running.stop().await.unwrap();

    assert_eq!(std::fs::read(sandbox.bucket().join("plain/good.csv")).unwrap(), csv);
    let json = std::fs::read_to_string(sandbox.bucket().join("json/good.csv.jsonl")).unwrap();
    assert_eq!(json, "{\"year\":2013,\"n\":1}\n{\"year\":2014,\"n\":2}\n");
    let mut back = Vec::new();
    zstd_decode(&std::fs::read(sandbox.bucket().join("zstd/good.csv.zst")).unwrap(), &mut back);
    assert_eq!(back, good, "the encode step packs the object as it came");

    let letters = dead_letters(&sandbox.bucket().join("dlq"));
    let expect = [
        ("inbox/bomb.csv.gz", "inbox/bomb.csv.gz expands more than 100:1"),
        ("inbox/not-gzip.gz", "inbox/not-gzip.gz is not gzip, zstd, bzip2 or xz"),
        ("inbox/truncated.csv.gz", "inbox/truncated.csv.gz"),
    ];
    assert_eq!(letters.len(), expect.len(), "{letters:#?}");
    for ((key, error), (want_key, want)) in letters.iter().zip(expect) {
        assert_eq!(key, want_key);
        assert!(error.contains(want) && !error.contains('\n'), "{key}: {error}");
    }
    assert!(!sandbox.bucket().join("plain/bomb.csv").exists(), "a refused bomb leaves no object");
}

fn zstd_decode(bytes: &[u8], out: &mut Vec<u8>) {
    let (reader, _) = weir_functions::compress::codec::open(
        bytes,
        None,
        weir_functions::compress::Expansion { max_bytes: 1 << 20, max_ratio: 1000 },
        "t",
    )
    .unwrap();
    let mut reader = reader;
    reader.read_to_end(out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_one_line_dead_letters() {
    let sandbox = Sandbox::new();
    let file = sandbox.pipeline("unpack", EXTRACT);
    let zeros = vec![0u8; 200 << 20];
    let bomb_layer = zip(&[("zeros.bin", &zeros)]);
    let nested: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("layer-{i}.zip"), bomb_layer.clone())).collect();
    let nested_refs: Vec<(&str, &[u8])> = nested.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let mut absolute = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_cksum();
    // tar refuses to write such a name itself: write it into the header by hand.
    header.as_old_mut().name[..11].copy_from_slice(b"/etc/passwd");
    header.set_cksum();
    absolute.append(&header, &b"root"[..]).unwrap();
    let absolute = gzip(&absolute.into_inner().unwrap());
    let inputs: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "inbox/evil.zip",
            zip(&[("ok.txt", b"fine"), ("../evil", b"x")]),
            "member \"../evil\" is unsafe: relative path segment",
        ),
        ("inbox/absolute.tar.gz", absolute, "member \"/etc/passwd\" is unsafe: absolute key"),
        ("inbox/bomb.zip", bomb_layer.clone(), "member \"zeros.bin\" expands more than 100:1"),
        ("inbox/truncated.zip", bomb_layer[..bomb_layer.len() / 2].to_vec(), "inbox/truncated.zip: not a readable zip"),
        ("inbox/garbage.tgz", gzip(b"this is not a tar archive at all"), "inbox/garbage.tgz"),
    ];
    for (key, bytes, _) in &inputs {
        sandbox.drop_file(key, bytes);
    }
    // 42.zip-style: the outer archive holds archives, each a bomb.
    sandbox.drop_file("inbox/nested.zip", &zip(&nested_refs));
    let engine = engine(&sandbox);
    let running = engine.start(engine.load(&[file]).unwrap()).await.unwrap();
    let stats = running.pipeline("unpack").unwrap().executor.clone();
    let dead = || stats.events_dead_lettered.load(Ordering::SeqCst);
    // Five hostile inputs, and the four layers the nested one held.
    wait_for(WAIT, "every hostile archive dead-lettered", || dead() == 9).await;
    assert_eq!(stats.events_done.load(Ordering::SeqCst), 1, "the outer nested zip is only archives: it extracts");
    running.stop().await.unwrap();

    let letters = dead_letters(&sandbox.bucket().join("dlq"));
    for (key, _, expected) in &inputs {
        let (_, error) =
            letters.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no dead letter for {key}: {letters:#?}"));
        assert!(error.contains(expected), "{key}: {error:?} lacks {expected:?}");
        assert!(error.starts_with(key), "{key}: the error names the input: {error:?}");
        assert!(!error.contains('\n') && error.len() < 400, "{key}: one short line: {error:?}");
    }
    for i in 0..4 {
        let key = format!("inbox/unpacked/nested/layer-{i}.zip");
        let (_, error) = letters.iter().find(|(k, _)| *k == key).unwrap_or_else(|| panic!("no dead letter for {key}"));
        assert!(error.contains("expands more than 100:1"), "{key}: {error}");
    }
    assert!(!sandbox.bucket().join("evil").exists() && !sandbox.bucket().join("inbox/evil").exists());
    let written: Vec<_> =
        sandbox.files_under("inbox/unpacked").into_iter().filter(|p| !p.to_string_lossy().contains("nested")).collect();
    assert!(written.is_empty(), "nothing of a refused archive is kept: {written:?}");
}
