//! The fuzzing entry points: one function per parser of outside input, each taking arbitrary
//! bytes. `fuzz/` runs them under libFuzzer; `tests/fuzz_corpus.rs` replays the committed
//! corpora through the same functions in every `cargo test`. None may panic, and none may
//! accept input that its own checks should refuse (the assertions below).

use crate::bundle::{sign_body, EdgeBundle};
use crate::crypto::keys::{self, KeySet};
use crate::crypto::params::{ParameterSet, SecurityLevel};
use crate::engine::{decrypt, Decoding, EdgeEngine};
use crate::input::{images, vectors};
use crate::model::quant::Variant;
use crate::model::synth;
use crate::transport::ack::Ack;
use crate::transport::frame::{self, Input};
use crate::transport::message::ResultMessage;
use ed25519_dalek::SigningKey;
use std::sync::{Mutex, OnceLock};

/// A fuzz target: arbitrary bytes in, nothing out (it must not panic).
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory.
pub const TARGETS: [(&str, Target); 13] = [
    ("frames", frames),
    ("encrypted_features", encrypted_features),
    ("result_message", result_message),
    ("ack", ack),
    ("deploy_offer", deploy_offer),
    ("deploy_messages", deploy_messages),
    ("bundle", bundle),
    ("signed_bundle", signed_bundle),
    ("settings", settings),
    ("idx", idx),
    ("image", image),
    ("onnx", onnx),
    ("vector_line", vector_line),
];

/// Keys, the decodings of a small model in every variant and an engine for encrypted
/// features, made once per process.
struct Fixture {
    keys: KeySet,
    decodings: Vec<Decoding>,
    engine: Mutex<EdgeEngine>,
    signer: SigningKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let params = ParameterSet::for_level(SecurityLevel::L128);
        let keys = keys::generate(params);
        let task = crate::engine::synthetic::Task::small();
        let decodings = [Variant::Last, Variant::Noact, Variant::Act]
            .into_iter()
            .map(|v| {
                let q = task.model(v, &params);
                let checks = crate::engine::ResultChecks::draw(&q, &params, &mut rand::rngs::OsRng)
                    .expect("checks");
                Decoding::new(&q, &params, keys.secret.key_id, &checks).expect("a decoding")
            })
            .collect();
        let q = task.model(Variant::Noact, &params);
        let engine = crate::engine::synthetic::Protected::new(&keys, params, q).engine;
        Fixture {
            keys,
            decodings,
            engine: Mutex::new(engine),
            signer: SigningKey::from_bytes(&[7; 32]),
        }
    })
}

/// Make the shared keys and engine now (libFuzzer's initialisation), so that no input's
/// time includes them.
pub fn prepare() {
    fixture();
}

/// A stream of length-prefixed frames from a data source, each decoded.
pub fn frames(data: &[u8]) {
    let mut stream = data;
    while let Ok(Some(payload)) = frame::read_frame(&mut stream, 1 << 20) {
        let _ = frame::decode(&payload);
    }
    let _ = frame::decode(data);
}

/// An encrypted-feature frame's payload, run through the engine's checks and, if they pass,
/// the first encrypted layer. The key id is set to the engine's so that fuzzing gets past it.
pub(crate) fn encrypted_features(data: &[u8]) {
    let payload = [&[2u8, 1][..], data].concat();
    if let Ok(Input::Encrypted(mut features)) = frame::decode(&payload) {
        let f = fixture();
        features.key_id = f.keys.secret.key_id;
        let mut engine = f.engine.lock().unwrap_or_else(|e| e.into_inner());
        let _ = engine.infer_encrypted(&features);
    }
}

/// A result message from the broker, through everything the decryptor does with it: decode,
/// signature, and the decryption checks of each variant (the key id set to the fixture's).
pub(crate) fn result_message(data: &[u8]) {
    let Ok(mut message) = ResultMessage::decode(data) else {
        return;
    };
    let f = fixture();
    let _ = message.verify(&f.signer.verifying_key());
    message.result.key_id = f.keys.secret.key_id;
    for decoding in &f.decodings {
        if let Ok(decrypted) = decrypt(&message.result, decoding, &f.keys.secret) {
            assert!(decrypted.class < decoding.score_limits.len());
        }
    }
}

/// An end-to-end acknowledgement (the signature is checked before anything is decoded; an
/// unsigned fuzz input fails there, a signed one gets through to the decoder).
pub fn ack(data: &[u8]) {
    let f = fixture();
    let _ = Ack::decode(data, &f.signer.verifying_key(), "board");
    let signed = crate::transport::sealed::seal(
        crate::transport::ack::DOMAIN,
        crate::transport::ack::ACK_VERSION,
        data,
        &f.signer,
    );
    let _ = Ack::decode(&signed, &f.signer.verifying_key(), "board");
}

/// An offer for board "board" of `size` bytes in chunks of `chunk_size` (dummy digests).
fn offer(
    deployment: u64,
    payload: crate::transport::deploy::Payload,
    size: u64,
    chunk_size: u32,
) -> crate::transport::deploy::Offer {
    crate::transport::deploy::Offer {
        deployment,
        device_id: "board".into(),
        bundle_id: "0123456789abcdef".into(),
        payload,
        epoch: 2,
        size,
        chunk_size,
        chunks: vec![[1; 32]; size.div_ceil(chunk_size as u64) as usize],
        digest: [2; 32],
        cancelled: false,
        issued_ms: 1,
    }
}

/// A deployment offer as it arrives on the board (signed or not), and a model update file.
pub(crate) fn deploy_offer(data: &[u8]) {
    use crate::transport::deploy::{Offer, OFFER_DOMAIN, OFFER_VERSION};
    let f = fixture();
    let key = f.signer.verifying_key();
    let _ = Offer::decode(data, &key, "board");
    let signed = crate::transport::sealed::seal(OFFER_DOMAIN, OFFER_VERSION, data, &f.signer);
    if let Ok(offer) = Offer::decode(&signed, &key, "board") {
        // What decoding lets through is consistent: one digest per chunk, none empty.
        assert_eq!(offer.chunks.len() as u64, offer.chunk_count());
        for i in 0..offer.chunks.len() as u32 {
            assert!(offer.chunk_len(i) > 0);
        }
    }
    let _ = crate::bundle::ModelUpdate::from_bytes(data, &key);
}

/// A chunk request as the deployment agent gets it, a chunk and a state report as they
/// arrive (the chunk through a transfer's checks).
pub(crate) fn deploy_messages(data: &[u8]) {
    use crate::transport::deploy::{Chunk, ChunkRequest, Payload};
    let _ = ChunkRequest::decode(data);
    let _ = serde_json::from_slice::<crate::transport::deploy::Report>(data);
    if let Ok(chunk) = Chunk::decode(data) {
        let dir = std::env::temp_dir().join(format!("hedge-fuzz-deploy-{}", std::process::id()));
        let offer = offer(1, Payload::Bundle, 3000, 1024);
        let timeout = std::time::Duration::from_secs(1);
        if let Ok(mut d) = crate::edge::deploy::download::Download::resume(offer, &dir, 4, timeout)
        {
            let _ = d.arrived(chunk.index, &chunk.bytes);
            d.discard();
        }
    }
}

/// A bundle file as it arrives (before the signature is checked).
pub fn bundle(data: &[u8]) {
    let _ = EdgeBundle::from_bytes(data, &fixture().signer.verifying_key());
}

/// A bundle body behind a valid signature (what a signing key's holder could ship), through
/// decoding, its consistency checks and the engine's construction.
pub(crate) fn signed_bundle(data: &[u8]) {
    let f = fixture();
    let bytes = sign_body(data, &f.signer);
    if let Ok(b) = EdgeBundle::from_bytes(&bytes, &f.signer.verifying_key()) {
        let _ = b.engine();
    }
}

/// hedged's configuration file.
pub fn settings(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::edge::settings::Settings::parse(text);
    }
}

/// An IDX file (images or labels).
pub fn idx(data: &[u8]) {
    let _ = images::parse_idx(data, "fuzz.idx");
}

/// A PGM or PNG image.
pub fn image(data: &[u8]) {
    let _ = images::decode(data, "fuzz");
}

/// An ONNX model given to `hedge protect`: read as a head, and its leading ai.onnx.ml
/// operators rewritten for the extractor as the split does.
pub fn onnx(data: &[u8]) {
    let _ = crate::model::onnx::from_bytes(data);
    if let Ok(mut model) = <tract_onnx::pb::ModelProto as prost::Message>::decode(data) {
        crate::model::onnx::expand_leading_normalizers(&mut model);
    }
}

/// One line of a vector file or stream.
pub(crate) fn vector_line(data: &[u8]) {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = vectors::parse_line(line);
    }
}

/// Seed inputs for each target, made with the library's own encoders (genuine messages,
/// frames, acknowledgements, files), so that fuzzing starts from well-formed input.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::input::images::Image;
    let f = fixture();
    let task = synth::Task::new(5, 48, 10);
    let x = task.samples(21, 1).remove(0).0;
    let image = Image {
        width: 4,
        height: 3,
        pixels: (0..12).map(|i| i * 20).collect(),
    };
    let mut out = vec![
        ("frames", frame::encode(&Input::Plain(x.clone()))),
        ("frames", frame::encode(&Input::Image(image.clone()))),
        (
            "vector_line",
            vectors::format_sample(Some(3), &x).into_bytes(),
        ),
        ("vector_line", b"0.5, -1e3, 7".to_vec()),
        ("image", images::encode_pgm(&image)),
        ("image", b"P2\n2 2\n255\n0 10\n200 255\n".to_vec()),
        (
            "idx",
            [&[0u8, 0, 8, 1, 0, 0, 0, 3][..], &[1, 2, 3]].concat(),
        ),
        (
            "idx",
            [
                &[0u8, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 4][..],
                &image.pixels,
            ]
            .concat(),
        ),
        ("settings", include_bytes!("../config/hedged.toml").to_vec()),
        ("bundle", sign_body(b"not a bundle", &f.signer)),
        ("signed_bundle", b"not a bundle".to_vec()),
    ];
    let model = synth::classifier(5, &task, 24, None);
    for matmul in [false, true] {
        out.push(("onnx", crate::model::onnx::to_bytes(&model, matmul)));
    }
    // Every activation the importer reads, and three exporters' own graphs with them.
    use crate::model::activation::{Activation, EACH};
    for f in EACH
        .into_iter()
        .filter(|&f| !matches!(f, Activation::Relu | Activation::Identity))
    {
        let model = synth::classifier(5, &task, 8, Some(f));
        out.push(("onnx", crate::model::onnx::to_bytes(&model, false)));
    }
    out.push((
        "onnx",
        include_bytes!("../tests/data/pipelines/scaler-mlp-logistic.onnx").to_vec(),
    ));
    out.push((
        "onnx",
        include_bytes!("../tests/data/pipelines/gelu-mlp.onnx").to_vec(),
    ));
    // GELU in the five nodes PyTorch writes below opset 20 (fused on import).
    out.push((
        "onnx",
        include_bytes!("../tests/data/pipelines/torch-gelu-mlp.onnx").to_vec(),
    ));
    // Keras through tf2onnx: GELU's tanh form in eight nodes, a batch norm as Mul and Add.
    for keras in [
        &include_bytes!("../tests/data/pipelines/keras-gelu-tanh.onnx")[..],
        &include_bytes!("../tests/data/pipelines/keras-batchnorm.onnx")[..],
    ] {
        out.push(("onnx", keras.to_vec()));
    }
    // scikit-learn's Scaler and Normalizer in front (expanded for the extractor).
    out.push((
        "onnx",
        include_bytes!("../tests/data/pipelines/scaler-normalizer-mlp.onnx").to_vec(),
    ));
    let mut engine = f.engine.lock().unwrap_or_else(|e| e.into_inner());
    let features = engine.encrypt_features(&x).expect("encrypts");
    let bytes = postcard::to_allocvec(&features).expect("serialises");
    // The whole GGSW is megabytes: its head carries the structure.
    out.push(("encrypted_features", bytes[..bytes.len().min(256)].to_vec()));
    let result = engine.infer_encrypted(&features).expect("infers");
    let mut message = ResultMessage {
        device_id: "board".into(),
        bundle_id: "0123456789abcdef".into(),
        seq: 1,
        timestamp_ms: 0,
        infer_us: 0,
        extract_us: 0,
        result,
        signed: None,
    };
    message.sign(&f.signer);
    out.push(("result_message", message.encode()));
    let ack = Ack {
        device_id: "board".into(),
        received: vec![(1, 6), (9, 9)],
        issued_ms: 1,
    };
    out.push(("ack", ack.encode(&f.signer)));
    let update = offer(
        3,
        crate::transport::deploy::Payload::ModelUpdate,
        5000,
        2048,
    );
    out.push(("deploy_offer", update.encode(&f.signer)));
    let request = crate::transport::deploy::ChunkRequest {
        deployment: 3,
        first: 1,
        count: 8,
    };
    out.push(("deploy_messages", request.encode()));
    let chunk = crate::transport::deploy::Chunk {
        deployment: 1,
        index: 2,
        bytes: vec![5; 952],
    };
    out.push(("deploy_messages", chunk.encode()));
    out
}
