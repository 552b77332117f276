# CAVL pipeline: region features → contrastive pretraining → adapter finetuning → evaluation.
# Each stage is one file in workflow/rules/ and runs one module of the code:
configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"  # config validation (cavl.config, cavl.settings), shared paths
include: "workflow/rules/data.smk"  # demo_data, manifest, task_data: cavl.demo, cavl.manifest, cavl.task_data
include: "workflow/rules/extract.smk"  # detector_vocab, train_detector, extract_shard, gather_features: extract/
include: "workflow/rules/pretrain.smk"  # pretrain: cavl.pretrain
include: "workflow/rules/finetune.smk"  # finetune, evaluate, evaluate_zero_shot: cavl.finetune, cavl.evaluate
include: "workflow/rules/summary.smk"  # summary: cavl.summary
include: "workflow/rules/visualise.smk"  # visualise: cavl.visualise, cavl.alignment
include: "workflow/rules/ablations.smk"  # the ablation grid (ablation_*, ablations): cavl.ablations, cavl.ablation_summary
include: "workflow/rules/functions/targets.smk"  # the default target's file list


rule all:
    default_target: True
    input:
        all_targets(),
