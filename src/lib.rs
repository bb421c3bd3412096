//! hedge: homomorphically encrypted deep neural networks at the edge.
//!
//! The backend (`hedge`, trusted) generates keys, quantises and encrypts a classifier into an
//! edge bundle that holds only public material; the edge (`hedged`, untrusted) runs encrypted
//! inference on it and publishes the results; the backend decrypts them. See README.md and
//! docs/CRYPTO.md.
//!
//! Where things live (dependencies point down this list, never up):
//!
//! | module | what |
//! |---|---|
//! | [`backend`] | key directory, protection, decryption agent, embedded broker (feature `backend`) |
//! | [`report`] | benchmark grid, accuracy evaluation, plot (feature `backend`) |
//! | [`edge`] | hedged: settings, sources, queue, scheduler, sink, spool, publisher, reload, watchdog |
//! | [`transport`] | MQTT settings and connection, the one result message |
//! | [`bundle`] | the signed edge bundle: format, verification, [`bundle::open`] |
//! | [`engine`] | encrypted model, edge inference engine, result ciphertexts; encryption and decryption (feature `backend`) |
//! | [`input`] | vector lines, images, socket frames |
//! | [`model`] | ONNX import, network split, quantisation, integer reference |
//! | [`crypto`] | parameter sets, keys, encrypted linear layers, bootstraps (no I/O) |
//! | [`files`], [`progress`], [`cpu`], [`hex`] | atomic writes, progress reports, CPU checks, hex |
//!
//! Each layer has its own error type; the binaries (`src/bin`) are the only users of anyhow.

#[cfg(feature = "backend")]
pub mod backend;
pub mod bundle;
pub mod cpu;
pub mod crypto;
pub mod edge;
pub mod engine;
pub mod files;
#[cfg(all(feature = "test-support", feature = "backend"))]
pub mod fuzz;
pub mod hex;
pub mod input;
pub mod model;
pub mod progress;
#[cfg(feature = "backend")]
pub mod report;
pub mod transport;
