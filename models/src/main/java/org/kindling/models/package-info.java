/**
 * Layers with explicit forward/backward, model assembly from YAML configs, optimizers, the
 * single-process trainer and the checkpoint format. Depends on {@code gpu-ops} only: never on
 * Spark, Arrow or Hadoop.
 */
package org.kindling.models;
