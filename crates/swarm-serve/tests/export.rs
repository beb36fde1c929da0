//! Exporting an elite of a swarm directory as a standalone HF model dir (`swarm export`): the
//! dir must load as any HF model does, hold exactly the elite's genome materialised, and
//! carry the base's config, tokenizer and chat template; bad requests must fail with their
//! reason and leave nothing behind.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device};
use common::greedy;
use common::swarm::{TinySwarm, MAX_TOKENS, PROMPT};
use swarm_merge::{materialise_to_weights, DirOutput, Rank};
use swarm_model::{Llama, Precision, Pretrained, TensorSource, Weights};
use swarm_serve::open_swarm;

/// Every expert must be an elite (the manifest names the best per skill) and `e7` too.
const ELITES: [(&str, [f64; 3]); 4] = [
    ("expert-coding", [0.9, 0.1, 0.2]),
    ("expert-database", [0.2, 0.8, 0.1]),
    ("expert-os", [0.1, 0.2, 0.7]),
    ("e7", [0.6, 0.6, 0.6]),
];

fn answer(pretrained: &Pretrained) -> String {
    let weights =
        Weights::from_source(pretrained.weights.as_ref(), &Device::Cpu, DType::F32).unwrap();
    let model = Llama::load(&weights, &pretrained.config, &Device::Cpu, Precision::F32).unwrap();
    greedy(&model, &PROMPT, MAX_TOKENS).text
}

fn values(source: &dyn TensorSource, name: &str) -> Vec<f32> {
    source
        .load(name, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn an_exported_elite_is_its_genome_with_the_base_files() {
    let s = TinySwarm::new(Rank::Full);
    s.save(&ELITES);
    let opened = open_swarm(&s.swarm).unwrap();
    let out = s.swarm.with_file_name("e7-hf");
    opened.export_elite("e7", &DirOutput::new(&out)).unwrap();

    let exported = Pretrained::open(out.to_str().unwrap()).unwrap();
    let base = Pretrained::open(s.base_dir.to_str().unwrap()).unwrap();
    let want = materialise_to_weights(&s.base, &s.factors, &s.genomes["e7"], &Device::Cpu).unwrap();
    let names = s.base.names();
    assert_eq!(exported.weights.names(), names);
    for name in &names {
        assert_eq!(
            values(exported.weights.as_ref(), name),
            values(&want, name),
            "{name}"
        );
    }
    // Not the base: the export would pass the loop above for a base-only genome otherwise.
    let embed = "model.embed_tokens.weight";
    assert_ne!(
        values(exported.weights.as_ref(), embed),
        values(&s.base, embed)
    );
    assert_eq!(exported.config.hidden_size, base.config.hidden_size);
    assert_eq!(exported.config.vocab_size, base.config.vocab_size);
    let text = "SELECT name FROM users; ls -la ~ # ok";
    assert_eq!(
        exported.tokenizer.encode(text, true).unwrap(),
        base.tokenizer.encode(text, true).unwrap()
    );
    assert_eq!(
        exported.chat_template().unwrap().source(),
        base.chat_template().unwrap().source()
    );

    // It answers what the elite answers, and not what the base answers.
    let direct = Llama::load(&want, &base.config, &Device::Cpu, Precision::F32).unwrap();
    let elite_answer = greedy(&direct, &PROMPT, MAX_TOKENS).text;
    assert_eq!(answer(&exported), elite_answer);
    assert_ne!(answer(&base), elite_answer);

    // In bf16: the same values rounded.
    let out16 = s.swarm.with_file_name("e7-bf16");
    let bf16 = DirOutput {
        dtype: DType::BF16,
        ..DirOutput::new(&out16)
    };
    opened.export_elite("e7", &bf16).unwrap();
    let exported16 = Pretrained::open(out16.to_str().unwrap()).unwrap();
    let mut rounded = Weights::new();
    rounded.insert(
        embed,
        want.get(embed).unwrap().to_dtype(DType::BF16).unwrap(),
    );
    assert_eq!(
        values(exported16.weights.as_ref(), embed),
        values(&rounded, embed)
    );
    assert_eq!(exported16.config.torch_dtype, "bfloat16");
}

#[test]
fn bad_exports_fail_with_their_reason_and_leave_nothing() {
    let s = TinySwarm::new(Rank::Top(2));
    s.save(&ELITES);
    let opened = open_swarm(&s.swarm).unwrap();

    let out = s.swarm.with_file_name("nobody");
    let err = opened
        .export_elite("nobody", &DirOutput::new(&out))
        .unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
    assert!(!out.exists());

    // An existing dir is refused and kept as it was, unless overwriting is asked for.
    let taken = s.swarm.with_file_name("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), "mine").unwrap();
    assert!(opened.export_elite("e7", &DirOutput::new(&taken)).is_err());
    assert_eq!(
        std::fs::read_to_string(taken.join("keep.txt")).unwrap(),
        "mine"
    );
    let replace = DirOutput {
        overwrite: true,
        ..DirOutput::new(&taken)
    };
    opened.export_elite("e7", &replace).unwrap();
    assert!(!taken.join("keep.txt").exists());
    assert!(Pretrained::open(taken.to_str().unwrap()).is_ok());
}
