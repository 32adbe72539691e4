//! A bounded no-panic run over every parser, in the normal suite: arbitrary bytes and
//! mutations of the example's own files go through the real loaders (goldsmith.toml,
//! layer.toml, image definitions, inventory.toml, templates). Errors are fine; a panic
//! fails the test. The unbounded version is `fuzz/` (cargo-fuzz), run by ci/fuzz.sh.

use goldsmith::fuzzing;
use proptest::prelude::*;
use std::path::Path;

/// The example's files of one kind, to mutate.
fn seeds(kind: &str) -> Vec<Vec<u8>> {
    let s: Vec<Vec<u8>> = fuzzing::seeds(Path::new(env!("CARGO_MANIFEST_DIR")))
        .into_iter()
        .filter(|(rel, _)| match kind {
            "layer" => rel.ends_with("layer.toml"),
            "image" => rel.starts_with("images/") && rel.ends_with(".toml"),
            "template" => rel.ends_with(".tmpl") || rel.ends_with(".hbs"),
            other => rel == other,
        })
        .map(|(_, b)| b)
        .collect();
    assert!(!s.is_empty(), "no seed files for {kind}");
    s
}

/// One edit of a seed: overwrite, insert or delete a few bytes at some position.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

/// Bytes that matter to TOML and handlebars, plus anything at all.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(
            b"[]{}=\"'\\.,#\n\r\t 0123456789-+:eE_/{}~!@$%^&*()<>|\xff\xfe\x00".to_vec()
        ),
        any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), interesting_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        (
            any::<usize>(),
            prop::collection::vec(interesting_byte(), 1..24)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
    ]
}

fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        prop::collection::vec(interesting_byte(), 0..512),
        (0..n, prop::collection::vec(edit(), 1..8)).prop_map(move |(i, edits)| {
            let mut b = seeds[i].clone();
            for e in edits {
                let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
                match e {
                    Edit::Set(i, v) if !b.is_empty() => {
                        let i = i % b.len();
                        b[i] = v;
                    }
                    Edit::Set(..) => {}
                    Edit::Insert(i, v) => {
                        let i = at(i, b.len());
                        b.splice(i..i, v);
                    }
                    Edit::Delete(i, n) => {
                        let i = at(i, b.len());
                        let end = (i + n).min(b.len());
                        b.drain(i..end);
                    }
                }
            }
            b
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_never_panics(b in mutated(seeds("goldsmith.toml"))) {
        fuzzing::config(&b);
    }

    #[test]
    fn layer_never_panics(b in mutated(seeds("layer"))) {
        fuzzing::layer(&b);
    }

    #[test]
    fn image_never_panics(b in mutated(seeds("image"))) {
        fuzzing::image(&b);
    }

    #[test]
    fn inventory_never_panics(b in mutated(seeds("inventory.toml"))) {
        fuzzing::inventory(&b);
    }

    #[test]
    fn template_never_panics(b in mutated(seeds("template"))) {
        fuzzing::template(&b);
    }
}

/// The scratch project itself must load cleanly, or every case above would stop at the
/// first error and fuzz nothing past it.
#[test]
fn the_scratch_project_loads_cleanly() {
    assert!(
        fuzzing::baseline_loads(),
        "the fuzzing baseline project has errors"
    );
}
