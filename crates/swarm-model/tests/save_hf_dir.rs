//! Saving a GGUF-loaded model as an HF dir and loading it back: the same tensors, the same
//! tokenizer, the same chat template, and identical logits.
//!
//! Needs the default GGUF (`ensure_default_model`: the CI setup script caches it).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use swarm_model::{
    ensure_default_model, ChatMessage, Llama, Precision, Pretrained, SafetensorsFiles, TensorSource,
};

#[test]
fn gguf_saved_as_hf_dir_gives_identical_logits() -> Result<()> {
    let gguf = Pretrained::from_gguf(&ensure_default_model()?)?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("smollm2-hf");
    gguf.save_hf_dir(&out, DType::F32)?;
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // Nothing but the finished dir is left beside it.
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);

    let hf = Pretrained::from_hf_dir(&out)?;
    assert_eq!(hf.config, {
        let mut c = gguf.config.clone();
        c.torch_dtype = "float32".into();
        c
    });
    assert_eq!(hf.chat_template, gguf.chat_template);
    assert_eq!(hf.tokenizer.eos_token(), gguf.tokenizer.eos_token());

    let messages = [ChatMessage::user(
        "Write `ls -la | wc -l` in Python, please: 12 345",
    )];
    let text = gguf.chat_template()?.render(&messages, true)?;
    assert_eq!(hf.chat_template()?.render(&messages, true)?, text);
    let ids = gguf.tokenizer.encode(&text, false)?;
    assert_eq!(hf.tokenizer.encode(&text, false)?, ids);

    let logits = |p: &Pretrained| -> Result<Tensor> {
        let model = Llama::load(p.weights.as_ref(), &p.config, &Device::Cpu, Precision::F32)?;
        let mut cache = model.new_cache(1, ids.len());
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        Ok(model.forward(&input, &mut cache)?)
    };
    let diff = (logits(&gguf)? - logits(&hf)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert_eq!(diff, 0.0, "logits differ by {diff}");
    Ok(())
}

#[test]
fn saved_dir_in_bf16_holds_bf16_tensors() -> Result<()> {
    let gguf = Pretrained::from_gguf(&ensure_default_model()?)?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("bf16");
    gguf.save_hf_dir(&out, DType::BF16)?;
    let files = SafetensorsFiles::open_dir(&out)?;
    let norm = files.load("model.norm.weight", &Device::Cpu)?;
    assert_eq!(norm.dtype(), DType::BF16);
    let hf = Pretrained::from_hf_dir(&out)?;
    assert_eq!(hf.config.torch_dtype, "bfloat16");
    Ok(())
}
