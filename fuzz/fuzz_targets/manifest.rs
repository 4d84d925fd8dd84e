//! Feeds arbitrary bytes to the manifest parser and every renderer.
//!
//! Any panic is a bug: the server parses manifests that users send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tend_manifest::ServiceSpec;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    match tend_manifest::parse(&source, "tend.toml") {
        Ok(spec) => {
            // What the parser accepts, the API must be able to send and receive.
            let json = serde_json::to_string(&spec).expect("a spec serializes");
            let back: ServiceSpec = serde_json::from_str(&json).expect("a spec deserializes");
            assert_eq!(back.name(), spec.name());
        }
        Err(err) => {
            assert!(!err.problems().is_empty());
            for p in err.problems() {
                assert!(p.span.start <= p.span.end && p.span.end <= source.len());
                assert!(source.is_char_boundary(p.span.start) && source.is_char_boundary(p.span.end));
                assert!(p.line >= 1 && p.column >= 1);
            }
            let plain = err.render(false);
            assert!(!plain.contains('\x1b'), "plain render must not carry escapes");
            let _ = err.render(true);
            let _ = err.to_json();
            let mut out = String::new();
            let _ = miette::GraphicalReportHandler::new().render_report(&mut out, &err);
        }
    }
});
