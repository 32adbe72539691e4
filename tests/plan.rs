//! `goldsmith plan`: digests, sharing between images, stable JSON.

mod support;

use goldsmith::config::Config;
use goldsmith::plan::{self, NoCache, Resolutions};
use proptest::prelude::*;
use support::Project;

/// A fixed (fake) mirror, so digests do not depend on this host's apt sources.
const MIRRORS: &str = "mirror = \"http://mirror.example/debian\"\nsecurity_mirror = \"http://security.example/debian-security\"\n";

/// The example with a fixed mirror and a cache of its own (an empty one: the plan then
/// does not depend on what other tests built).
fn example() -> Project {
    let p = Project::example();
    let cfg = p.read("goldsmith.toml").replace(
        &support::shared_cache().display().to_string(),
        &p.path("cache").display().to_string(),
    );
    p.write("goldsmith.toml", &format!("{MIRRORS}{cfg}"));
    p
}

fn plan_json(p: &Project) -> serde_json::Value {
    p.run(&["plan", "--json", "--no-resolve"]).expect(0).json()
}

fn digests(v: &serde_json::Value, image: usize) -> Vec<String> {
    v["images"][image]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn base_and_web_share_their_lower_layers() {
    let p = example();
    let v = plan_json(&p);
    assert_eq!(v["images"][0]["name"], "base");
    assert_eq!(v["images"][1]["name"], "web");
    let (base, web) = (digests(&v, 0), digests(&v, 1));
    assert_eq!(base.len(), 2);
    assert_eq!(web.len(), 3);
    assert_eq!(base[0], web[0], "debian-base is shared");
    assert_eq!(base[1], web[1], "hardening is shared");
    assert_eq!(
        v["summary"]["layers"], 3,
        "shared layers are one build unit each"
    );
    assert_eq!(v["summary"]["shared_layers"], 2);
}

#[test]
fn editing_a_web_file_changes_only_the_web_layer() {
    let p = example();
    let before = plan_json(&p);
    p.edit(
        "recipes/web/files/index.html.hbs",
        "Served by",
        "Proudly served by",
    );
    let after = plan_json(&p);
    let (b, a) = (digests(&before, 1), digests(&after, 1));
    assert_eq!(b[0], a[0]);
    assert_eq!(b[1], a[1]);
    assert_ne!(b[2], a[2]);
    assert_eq!(digests(&before, 0), digests(&after, 0), "base is untouched");
}

#[test]
fn editing_a_lower_layer_changes_it_and_everything_above() {
    let p = example();
    let before = plan_json(&p);
    p.edit(
        "recipes/hardening/files/sshd_config.hbs",
        "PermitRootLogin no",
        "PermitRootLogin no\nMaxAuthTries 3",
    );
    let after = plan_json(&p);
    let (b, a) = (digests(&before, 1), digests(&after, 1));
    assert_eq!(b[0], a[0]);
    assert_ne!(b[1], a[1]);
    assert_ne!(b[2], a[2]);
}

#[test]
fn plan_json_snapshot() {
    let p = example();
    insta::assert_json_snapshot!("plan_example", plan_json(&p));
}

#[test]
fn plan_text_names_sharing() {
    let p = example();
    let r = p.run(&["plan", "--no-resolve"]).expect(0);
    assert!(r.stdout.contains("shared with web"), "{}", r.stdout);
    assert!(r.stdout.contains("2 shared between images"), "{}", r.stdout);
}

/// A project of `n` stacked layers, each with one file whose content is `contents[i]`.
fn stack_project(contents: &[String]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    std::fs::write(root.join("goldsmith.toml"), MIRRORS).unwrap();
    let mut names = Vec::new();
    for (i, c) in contents.iter().enumerate() {
        let name = format!("l{i}");
        let dir = root.join("recipes").join(&name);
        std::fs::create_dir_all(dir.join("files")).unwrap();
        std::fs::write(dir.join("files/f"), c).unwrap();
        let boot = if i == 0 {
            "[bootstrap]\ndistro = \"debian\"\nsuite = \"bookworm\"\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join("layer.toml"),
            format!("{boot}[[files]]\nsource = \"f\"\ndest = \"/etc/f{i}\"\n"),
        )
        .unwrap();
        names.push(format!("\"{name}\""));
    }
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::write(
        root.join("images/img.toml"),
        format!("layers = [{}]\n", names.join(", ")),
    )
    .unwrap();
    d
}

fn stack_digests(d: &tempfile::TempDir) -> Vec<String> {
    let cfg = Config::load(&d.path().join("goldsmith.toml"), true).unwrap();
    let recipes = goldsmith::recipe::load(&cfg, &[]).unwrap();
    let p = plan::make(&recipes, &[], &NoCache, &Resolutions::none()).unwrap();
    p.images[0].layers.clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A change in layer k changes exactly the digests of layers k and above.
    #[test]
    fn a_change_propagates_exactly_upwards(
        contents in proptest::collection::vec("[a-z]{1,12}", 1..7),
        k_seed in any::<usize>(),
        extra in "[A-Z]{1,5}",
    ) {
        let n = contents.len();
        let k = k_seed % n;
        let before = stack_digests(&stack_project(&contents));
        let mut changed = contents.clone();
        changed[k].push_str(&extra);
        let after = stack_digests(&stack_project(&changed));
        for i in 0..n {
            if i < k {
                prop_assert_eq!(&before[i], &after[i], "layer {} below the change must keep its digest", i);
            } else {
                prop_assert_ne!(&before[i], &after[i], "layer {} at/above the change must get a new digest", i);
            }
        }
    }
}
