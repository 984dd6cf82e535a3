/**
 * Corpus preparation: byte-level BPE tokenizers, the Spark prepare job and the Arrow IPC shard
 * format (writer and reader).
 */
package org.kindling.data;
