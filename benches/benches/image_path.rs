//! The per-image path of `image.resize_and_watermark`, stage by stage and whole.
//!
//! `cargo bench -p weir-benches --bench image_path`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_functions::image::{decode, encode, resize, watermark};
use weir_functions::{Context, Item, Limits, Metadata, Params, Payload, Registry, Stores};

fn stages(c: &mut Criterion) {
    let jpeg = weir_benches::photo_jpeg(4000, 3000);
    let limits = Limits::default();
    let decoded = decode::flatten(decode::decode(&jpeg, &limits, "bench.jpg").unwrap(), [255, 255, 255]);
    let (w, h) = resize::fit_inside(decoded.width(), decoded.height(), 1600);
    let large = resize::resize(&decoded, w, h).unwrap();
    let mark = watermark::Watermark::new(toml::from_str("text = \"MyStore\"").unwrap()).unwrap();

    let mut group = c.benchmark_group("stages_12mp");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| b.iter(|| decode::decode(&jpeg, &limits, "bench.jpg").unwrap()));
    group.bench_function("resize_to_1600", |b| b.iter(|| resize::resize(&decoded, w, h).unwrap()));
    group.bench_function("watermark_1600", |b| {
        b.iter_batched(|| large.clone(), |mut img| mark.apply(&mut img), criterion::BatchSize::LargeInput)
    });
    group.bench_function("encode_1600_q80", |b| b.iter(|| encode::encode(&large, encode::Format::Jpeg, 80).unwrap()));
    group.finish();
}

fn whole(c: &mut Criterion) {
    let jpeg = bytes::Bytes::from(weir_benches::photo_jpeg(4000, 3000));
    let function = Registry::builtin()
        .build(
            "image.resize_and_watermark",
            Params::parse(r#"{ sizes = [{ name = "thumb", long_edge = 200 }, { name = "medium", long_edge = 800 }, { name = "large", long_edge = 1600 }], watermark = { text = "MyStore" } }"#).unwrap(),
        )
        .unwrap()
        .function;
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let ctx = Context::standalone(Stores::new());
    let mut group = c.benchmark_group("resize_and_watermark_12mp");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("three_variants", |b| {
        b.iter(|| {
            let item = Item::new(Payload::Bytes(jpeg.clone()), Metadata::for_object("memory://bench", "p.jpg"));
            runtime.block_on(function.invoke(item, &ctx)).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, stages, whole);
criterion_main!(benches);
