# Sourced by the e2e scripts that serve a throwaway model: tiny_model TANDEM MAXPOS preps the
# fortunes corpus into ./data and trains a one-layer llama (hidden 32, vocab 300, context
# MAXPOS) for 2 steps in ./run; TINY_CK is then its checkpoint (an absolute path).
tiny_model() {
    local tandem=$1 maxpos=$2
    "$tandem" prep --out data --quiet --vocab-size 300 --delimiter % --val-fraction 0.05 \
        /usr/share/games/fortunes/fortunes
    cat > job.json <<JOB
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 300,
           "max_position_embeddings": $maxpos},
 "data": {"train": "data", "seq_len": 32},
 "train": {"batch_size": 4, "steps": 2, "lr": 1e-3, "seed": 1},
 "checkpoint": {"dir": "run", "every": 2, "keep": 1}, "device": "cpu"}
JOB
    "$tandem" train job.json --quiet 2> /dev/null
    TINY_CK=$PWD/run/step_00000002
}
