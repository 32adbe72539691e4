//! `goldsmith validate` on bad input: exit code 2 and a message that names the file,
//! line, column and key. Each case breaks one thing in a copy of the example project.

mod support;

use support::Project;

struct Case {
    name: &'static str,
    /// (file, content) to write into the project.
    writes: &'static [(&'static str, &'static str)],
    /// A symlink to create: (link, target).
    symlink: Option<(&'static str, &'static str)>,
    /// The message must contain each of these.
    expect: &'static [&'static str],
}

const WEB_LAYERS: &str = "layers = [\"debian-base\", \"hardening\", \"web\"]\n";

const CASES: &[Case] = &[
    Case {
        name: "unknown key in an image",
        writes: &[("images/web.toml", "description = \"x\"\nlayers = [\"debian-base\"]\nlayerz = []\n")],
        symlink: None,
        expect: &["images/web.toml:3:1: unknown field 'layerz', expected one of"],
    },
    Case {
        name: "wrong type",
        writes: &[("images/web.toml", "layers = [\"debian-base\"]\n[disk]\nsize = 2048\n")],
        symlink: None,
        expect: &["images/web.toml:3:8: disk.size: invalid type: integer '2048', expected a string"],
    },
    Case {
        name: "missing layer",
        writes: &[("images/web.toml", "layers = [\"debian-base\", \"nope\"]\n")],
        symlink: None,
        expect: &["images/web.toml:1:26: layers[1]: layer 'nope' not found (no recipes/nope/layer.toml)"],
    },
    Case {
        name: "layer listed twice",
        writes: &[("images/web.toml", "layers = [\n  \"debian-base\",\n  \"hardening\",\n  \"hardening\",\n]\n")],
        symlink: None,
        expect: &["images/web.toml:4:3: layers[2]: layer 'hardening' is listed twice (first on line 3)"],
    },
    Case {
        name: "base layer not first",
        writes: &[("images/web.toml", "layers = [\"hardening\", \"debian-base\"]\n")],
        symlink: None,
        expect: &[
            "images/web.toml:1:11: layers[0]: layer 'hardening' has no [bootstrap] table",
            "images/web.toml:1:24: layers[1]: layer 'debian-base' bootstraps a tree (recipes/debian-base/layer.toml:",
        ],
    },
    Case {
        name: "a second bootstrap",
        writes: &[
            ("recipes/other-base/layer.toml", "[bootstrap]\ndistro = \"debian\"\nsuite = \"bookworm\"\n"),
            ("images/web.toml", "layers = [\"debian-base\", \"other-base\"]\n"),
        ],
        symlink: None,
        expect: &["images/web.toml:1:26: layers[1]: layer 'other-base' bootstraps a tree (recipes/other-base/layer.toml:1) but is not first"],
    },
    Case {
        name: "undefined template variable",
        writes: &[("recipes/web/files/index.html.hbs", "<html>\n<title>{{site_titel}}</title>\n</html>\n")],
        symlink: None,
        expect: &["recipes/web/files/index.html.hbs:2:8: undefined variable 'site_titel' (rendering for image 'web')"],
    },
    Case {
        name: "file mode not octal",
        writes: &[("recipes/web/layer.toml", "[[files]]\nsource = \"index.html.hbs\"\ndest = \"/var/www/html/index.html\"\nmode = \"0648\"\n")],
        symlink: None,
        expect: &["recipes/web/layer.toml:4:8: files[0].mode: '0648' is not an octal file mode"],
    },
    Case {
        name: "source escapes with ..",
        writes: &[("recipes/web/layer.toml", "[[files]]\nsource = \"../../../etc/passwd\"\ndest = \"/etc/x\"\n")],
        symlink: None,
        expect: &["recipes/web/layer.toml:2:10: files[0].source: '../../../etc/passwd' escapes the layer folder"],
    },
    Case {
        name: "absolute source",
        writes: &[("recipes/web/layer.toml", "[[files]]\nsource = \"/etc/passwd\"\ndest = \"/etc/x\"\n")],
        symlink: None,
        expect: &["recipes/web/layer.toml:2:10: files[0].source: '/etc/passwd' is an absolute path"],
    },
    Case {
        name: "symlink pointing outside",
        writes: &[("recipes/web/layer.toml", "[[files]]\nsource = \"evil\"\ndest = \"/etc/x\"\n")],
        symlink: Some(("recipes/web/files/evil", "/etc/passwd")),
        expect: &["recipes/web/layer.toml:2:10: files[0].source: 'evil' is a symlink that points outside the layer folder"],
    },
    Case {
        name: "destination not absolute",
        writes: &[("recipes/web/layer.toml", "[[files]]\nsource = \"index.html.hbs\"\ndest = \"var/www/html/index.html\"\n")],
        symlink: None,
        expect: &["recipes/web/layer.toml:3:8: files[0].dest: 'var/www/html/index.html' is not an absolute path"],
    },
    Case {
        name: "unknown key in a layer",
        writes: &[("recipes/web/layer.toml", "[packages]\ninstal = [\"nginx\"]\n")],
        symlink: None,
        expect: &["recipes/web/layer.toml:2:1: unknown field 'instal', expected 'install' or 'remove'"],
    },
    Case {
        name: "unknown key in goldsmith.toml",
        writes: &[("goldsmith.toml", "[build]\njobz = 2\n")],
        symlink: None,
        expect: &["goldsmith.toml:2:1: unknown field 'jobz'"],
    },
    Case {
        name: "check with two kinds",
        writes: &[("recipes/web/layer.toml", "[[checks]]\nname = \"both\"\nservice = { unit = \"nginx.service\" }\nport = { port = 80 }\n")],
        symlink: None,
        expect: &["recipes/web/layer.toml:2:8: checks[0] 'both': set exactly one of command, file, service, port, http (found 2)"],
    },
];

#[test]
fn the_example_is_valid() {
    let p = Project::example();
    let r = p.run(&["validate"]).expect(0);
    assert!(
        r.stdout.contains("3 layer(s), 2 image(s) valid"),
        "{}",
        r.stdout
    );
}

#[test]
fn bad_inputs_fail_with_file_line_and_key() {
    let mut failures = Vec::new();
    for c in CASES {
        let p = Project::example();
        for (f, content) in c.writes {
            // Whole-file rewrites of web.toml keep the web layer stack unless the case
            // is about the stack itself.
            p.write(f, content);
        }
        if let Some((link, target)) = c.symlink {
            std::os::unix::fs::symlink(target, p.path(link)).unwrap();
        }
        let r = p.run(&["validate"]);
        let ok = r.code == 2 && c.expect.iter().all(|e| r.stderr.contains(e));
        let no_panic = !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE");
        if !ok || !no_panic {
            failures.push(format!(
                "case '{}': exit {} (want 2), stderr:\n{}\nwanted: {:?}",
                c.name, r.code, r.stderr, c.expect
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let p = Project::example();
    p.write(
        "images/web.toml",
        "layers = [\"debian-base\", \"nope\", \"nope2\"]\n",
    );
    p.write(
        "images/base.toml",
        &format!("{WEB_LAYERS}[disk]\nboot = \"bios\"\n"),
    );
    let r = p.run(&["validate"]).expect(2);
    assert!(r.stderr.contains("layer 'nope' not found"), "{}", r.stderr);
    assert!(r.stderr.contains("layer 'nope2' not found"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("images/base.toml:3:8: disk.boot: 'bios' is not supported"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("3 errors"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let p = Project::example();
    p.run(&["validate", "--no-such-flag"]).expect(2);
    let r = p.run(&["plan", "--var", "novalue"]).expect(2);
    assert!(r.stderr.contains("expected KEY=VALUE"), "{}", r.stderr);
    let r = p.run(&["plan", "nosuchimage"]).expect(2);
    assert!(
        r.stderr.contains("no such image 'nosuchimage'"),
        "{}",
        r.stderr
    );
}

#[test]
fn cli_var_overrides_and_undefined_vars_are_errors() {
    let p = Project::example();
    let a = p.run(&["plan", "--json", "--no-resolve"]).expect(0).json();
    let b = p
        .run(&[
            "plan",
            "--json",
            "--no-resolve",
            "--var",
            "site_title=Other",
        ])
        .expect(0)
        .json();
    let web = |v: &serde_json::Value, i: usize| v["images"][1]["layers"][i]["digest"].clone();
    assert_eq!(web(&a, 1), web(&b, 1), "hardening does not use site_title");
    assert_ne!(
        web(&a, 2),
        web(&b, 2),
        "--var site_title changes the web layer"
    );
}
