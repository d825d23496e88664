use super::*;

#[test]
fn vit_counts_follow_timm() {
    // Derived by hand from timm's VisionTransformer at img_size 224, num_classes 0.
    assert_eq!(OPENVLA_7B.dino.params(), 303_230_976);
    assert_eq!(OPENVLA_7B.siglip.params(), 427_680_704);
    assert_eq!(OPENVLA_7B.projector_params(), 71_385_600);
    assert_eq!(OPENVLA_7B.llm.params(), 6_738_939_904);
    assert_eq!(OPENVLA_7B.base_params(), 7_541_237_184);
}

#[test]
fn platform_detection_mirrors_finetune_py() {
    let cases: &[(&[&str], Option<Platform>)] = &[
        (
            &["--dataset_name", "aloha1_put_X_into_pot_300_demos"],
            Some(Platform::Aloha),
        ),
        (
            &["--dataset_name", "libero_spatial_no_noops"],
            Some(Platform::Libero),
        ),
        (&["--dataset_name", "BRIDGE_orig"], Some(Platform::Bridge)),
        // libero is searched first, whatever the order of the words.
        (&["aloha", "libero"], Some(Platform::Libero)),
        (&["--dataset_name", "my_robot"], None),
    ];
    for (words, want) in cases {
        assert_eq!(Platform::from_words(words), *want, "{words:?}");
    }
    assert_eq!(
        Platform::detect(&["x_aloha_y"]),
        Some((Platform::Aloha, "aloha"))
    );
}
