use super::load::locate;
use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn builtin_profiles_parse_and_validate() {
    for (name, text) in BUILTIN {
        let p = parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!p.description.is_empty(), "{name} has no description");
    }
}

#[test]
fn expand_table() {
    let env = env_of(&[("A", "x"), ("EMPTY", "")]);
    let cases = [
        ("${A}/b", "x/b", vec![]),
        ("${B}/b", "${B}/b", vec!["B"]),
        ("${B:-def}", "def", vec![]),
        ("${EMPTY:-d}", "d", vec![]),
        ("no vars", "no vars", vec![]),
        ("${A}${B}", "x${B}", vec!["B"]),
        ("${unterminated", "${unterminated", vec![]),
    ];
    for (input, value, missing) in cases {
        let e = expand(input, &env);
        assert_eq!(e.value, value, "{input}");
        assert_eq!(e.missing, missing, "{input}");
    }
}

#[test]
fn aloha_model_spec_follows_flags() {
    let p = parse(BUILTIN[0].1, "aloha").unwrap();
    let spec = model_spec(&p, &ScriptArgs::default());
    assert_eq!(spec.num_images, 3);
    assert!(spec.use_film && spec.use_proprio);
    assert_eq!((spec.action_chunk, spec.action_dim), (25, 14));
    assert_eq!(spec.lora_rank, 32);
}

#[test]
fn overrides_change_fields_and_revalidate() {
    let mut l = load("aloha", None).unwrap();
    apply_overrides(
        &mut l,
        &[
            "train.max_steps=1000".into(),
            "train.lora_rank=8".into(),
            "planning.min_global_batch=32".into(),
        ],
    )
    .unwrap();
    assert_eq!(
        l.profile.train.get("max_steps").unwrap().as_u64(),
        Some(1000)
    );
    assert_eq!(model_spec(&l.profile, &ScriptArgs::default()).lora_rank, 8);
    assert_eq!(l.profile.planning.min_global_batch, 32);
    let err = apply_overrides(&mut l, &["train.lora_rank=-1".into()]).unwrap_err();
    assert!(err.to_string().contains("lora_rank"), "{err}");
    let err = apply_overrides(&mut l, &["nonsense".into()]).unwrap_err();
    assert!(err.to_string().contains("key=value"), "{err}");
    let err = apply_overrides(&mut l, &["planning.bogus=1".into()]).unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn locate_finds_nested_keys() {
    let text = "script:\n  path: x\ntrain:\n  lora_rank: 3\n  max_steps: 5\n";
    assert_eq!(
        locate(text, "f.yaml", "train.max_steps"),
        "f.yaml:5:3 (train.max_steps)"
    );
    assert_eq!(
        locate(text, "f.yaml", "script.path"),
        "f.yaml:2:3 (script.path)"
    );
    assert_eq!(locate(text, "f.yaml", "planning.x"), "f.yaml (planning.x)");
}

#[test]
fn missing_env_names_field_and_variable() {
    let p = parse(BUILTIN[0].1, "aloha").unwrap();
    let missing = resolved_flags(&p, &|_| None).missing;
    let vars: Vec<&str> = missing.iter().map(|(_, v)| v.as_str()).collect();
    assert!(vars.contains(&"VLA_DATA_ROOT") && vars.contains(&"VLA_RUN_ROOT"));
    let err = require_env(&missing, &Origin::BuiltIn)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.data_root_dir") && err.contains("export VLA_DATA_ROOT="),
        "{err}"
    );
    let env = env_of(&[
        ("VLA_DATA_ROOT", "/d"),
        ("VLA_RUN_ROOT", "/r"),
        ("WANDB_ENTITY", "e"),
        ("WANDB_PROJECT", "p"),
    ]);
    let ResolvedFlags { flags, missing } = resolved_flags(&p, &env);
    assert!(missing.is_empty(), "{missing:?}");
    assert!(flags.contains(&("--data_root_dir".into(), "/d".into())));
    assert!(flags.contains(&("--use_film".into(), "True".into())));
}
