/**
 * Decoder language models: {@link org.kindling.models.Gpt} assembles embeddings and blocks from a
 * config, {@link org.kindling.models.DecodeSession} decodes batches of sequences. The rest of the
 * module is laid out by architecture: {@code config} (YAML configs and their typed layer specs),
 * {@code nn} (parameters, activations, Linear, LayerNorm), {@code mixers} (token mixers, one
 * package per family, registered in {@code Mixers}), {@code channel} (channel mixers),
 * {@code train}, {@code data}, {@code io} (checkpoints, safetensors, Hugging Face export) and
 * {@code generate}. Depends on {@code gpu-ops} only: never on Spark, Arrow or Hadoop.
 */
package org.kindling.models;
