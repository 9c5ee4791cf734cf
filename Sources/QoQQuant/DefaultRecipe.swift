// The default recipe (recipes/__default__.yaml, which a test keeps identical). Every other recipe and every flag is
// checked against its fields: an unknown field is an error, never silently ignored.
let defaultRecipeYAML = #"""
# deepcompressor's examples/llm/configs/__default__.yaml, the fields qoq understands (deepcompressor.md §1.6).
# Every field is also a flag: quant.wgts.calib_range.num_grids → --wgts-calib-range-num-grids (the `quant` scope
# has no prefix); booleans take --name / --no-name.
seed: 12345
save_model: ""
skip_eval: false
cache:
  root: ""   # stage cache; "" = $QOQ_CACHE/quant-cache (~/.cache/qoq/quant-cache), "none" = off
output:
  root: runs
model:
  name: ""
  path: ""
  root: ""
  dtype: torch.float32   # calibration passes: torch.float32 (exact), torch.bfloat16 (2× faster GEMMs), torch.float16 (emulated, slower)
eval:
  tasks: [wikitext]
  evaluators: [gptq]
  max_seq_length: 2048
  max_windows: 0
  dataset: ""   # "" = the bundled WikiText-2 test file, data/wikitext-2-raw/wiki.test.raw
quant:
  develop_dtype: torch.float32
  calib:
    data: text
    path: ""   # "" = the bundled text, data/calibration/wikitext-2-valid.tokens.txt
    num_samples: 128
    seq_length: 1024
    min_seq_length: 0
    max_seq_length: 0
    # not in deepcompressor (issue #12): the residual stream held between layers during calibration;
    # torch.bfloat16 halves it (2 GiB → 1 GiB for 128 × 1024 tokens of a 4096-wide model)
    activations_dtype: torch.float32
  wgts:
    dtype: null
    zero_point: null
    group_shapes: [[1, -1]]
    scale_dtypes: [null]
    intermediate_dtypes: []
    intermediate_levels: []
    needs_dequant_saturation: false
    skips: []
    enable_kernel_gptq: false
    kernel_gptq:
      damp_percentage: 0.01
      block_size: 128
      num_inv_tries: 250
      hessian_block_size: 512
    enable_calib_range: true
    calib_range:
      objective: OutputsError
      strategy: Manual
      granularity: Group
      degree: 2
      element_batch_size: 64
      sample_batch_size: -1
      element_size: 512
      sample_size: -1   # sequences for q/k OutputsError searches; -1 = all (as deepcompressor), n = the first n
      pre_reshape: true
      outputs_device: cpu
      ratio: 1.0
      max_shrink: 0.2
      max_expand: 1.0
      num_grids: 80
      skips: []
  ipts:
    static: false
    dtype: null
    zero_point: null
    group_shapes: [[1, -1]]
    scale_dtypes: [null]
    skips: []
  opts:
    static: false
    dtype: null
    zero_point: null
    group_shapes: [[1, -1]]
    scale_dtypes: [null]
    skips: []
    # not in deepcompressor (issue #19): subtract a calibrated per-channel constant from post-RoPE keys before
    # quantizing them (exact: softmax ignores a per-query shift). auto = on for models with attention biases
    # (Qwen2) when the recipe has SmoothAttention; always; never (deepcompressor's behaviour).
    center_keys: auto
    # not in deepcompressor (issue #19): rotate each head of post-RoPE Q and K by the normalized Walsh–Hadamard
    # matrix before the KV cache (exact: q·k is unchanged), spreading K's outlier channels over the KV4 group.
    # auto = on where keys are centered; always; never (deepcompressor's behaviour).
    rotate_keys: auto
    # not in deepcompressor (issue #19): multiply each post-RoPE key channel (after centering, before rotation) by a
    # calibrated s_j = (E[q_j²] / E[(k_j − c_j)²])^(1/4) and divide the query by it (exact: q·k is unchanged), so
    # the channels that matter to the scores get more of the KV4 range; centered keys are then centered on their
    # mean. auto = on where keys are rotated; always; never (deepcompressor's behaviour).
    scale_keys: never
    # not in deepcompressor (issue #19): the exponent p of the key scales s_j = (E[q_j²] / E[(k_j − c_j)²])^p.
    # Manual: p = 1/4 in every layer; GridSearch: per layer the p among 0, 1/8, 3/16, 1/4, 5/16, 3/8, 1/2 whose
    # keys give the smallest attention-output error with K quantized, over the first scale_keys_sample_size
    # calibration sequences (-1 = all).
    scale_keys_strategy: Manual
    scale_keys_sample_size: 8
  enable_rotation: false
  rotation:
    random: false
    transforms: []
  enable_reorder: false
  reorder:
    strategy: Manual
    channel_metric: InputsAbsMax
    channel_index: Sequential
    dynamic: false
    skips: [residual]
  enable_smooth: false
  smooth:
    enable_proj: false
    proj:
      objective: OutputsError
      strategy: GridSearch
      granularity: Layer
      degree: 2
      sample_size: -1   # sequences for the GridSearch objective (AWQ); -1 = all (as deepcompressor), n = the first n
      spans: [[AbsMax, AbsMax]]
      alpha: -3
      beta: -3
      num_grids: 20
      skips: []
    enable_attn: false
    attn:
      strategy: Manual
      degree: 2
      sample_size: -1   # sequences for the GridSearch objective; -1 = all (as deepcompressor), n = the first n
      spans: [[AbsMax, AbsMax]]
      alpha: 0.5
      beta: 0
      num_grids: 20
"""#
