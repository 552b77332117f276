# The ablation grid (config `ablations:`, cavl/ablations.py): every variant x seed x task cell,
# each computed by the run that holds its settings. A cell whose settings are the configuration's
# uses the main run's folders (results/pretrain/, results/{task}/); the others run the same rules
# in results/ablation_runs/{run}/, which share everything upstream of their first changed stage.
# `snakemake ablations` builds the cells and the table (cavl.ablation_summary).


include: "functions/ablations.smk"


use rule pretrain as ablation_pretrain with:
    output:
        model=directory(f"{ablations.RUNS_DIR}/{{run}}/pretrain/model"),
        log=f"{ablations.RUNS_DIR}/{{run}}/pretrain/log.jsonl",
        curves=f"{ablations.RUNS_DIR}/{{run}}/pretrain/curves.png",
    log:
        "logs/ablation_runs/{run}/pretrain.log",


use rule finetune as ablation_finetune with:
    output:
        model=directory(f"{ablations.RUNS_DIR}/{{run}}/{{task}}/model"),
        log=f"{ablations.RUNS_DIR}/{{run}}/{{task}}/log.jsonl",
        curves=f"{ablations.RUNS_DIR}/{{run}}/{{task}}/curves.png",
    log:
        "logs/ablation_runs/{run}/finetune/{task}.log",


use rule evaluate as ablation_evaluate with:
    output:
        metrics=f"{ablations.RUNS_DIR}/{{run}}/{{task}}/metrics.json",
        predictions=f"{ablations.RUNS_DIR}/{{run}}/{{task}}/predictions.parquet",
    log:
        "logs/ablation_runs/{run}/evaluate/{task}.log",


use rule evaluate_zero_shot as ablation_evaluate_zero_shot with:
    output:
        metrics=f"{ablations.RUNS_DIR}/{{run}}/{{task}}/metrics.json",
        predictions=f"{ablations.RUNS_DIR}/{{run}}/{{task}}/predictions.parquet",
    log:
        "logs/ablation_runs/{run}/evaluate/{task}.log",


localrules:
    ablations,


rule ablation_summary:
    """results/ablations/: each cell's metrics.json, the table (mean ± s.d. over seeds, paired
    bootstrap against the baseline) as Markdown, CSV and HTML, and its figure."""
    input:
        ablation_summary_inputs,
    output:
        cells=[cell.copy_to for cell in ABLATION_CELLS],
        runs="results/ablations/runs.json",
        md="results/ablations/summary.md",
        csv="results/ablations/summary.csv",
        html=report(
            "results/ablations/summary.html",
            caption="../report/ablations.rst",
            category="4. Ablations",
            labels={"result": "1 table: each variant against the baseline"},
        ),
        plot=report(
            "results/ablations/summary.png",
            caption="../report/ablations_plot.rst",
            category="4. Ablations",
            labels={"result": "2 main metric per variant and seed (plot)"},
        ),
    log:
        "logs/ablations/summary.log",
    conda:
        "../../envs/cavl.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        runs=ablation_runs_json(),
    shell:
        "printf '%s' {params.runs} > {output.runs} && "
        "python -m cavl.ablation_summary --runs {output.runs} --md {output.md} --csv {output.csv} "
        "--html {output.html} --plot {output.plot} > {log} 2>&1"


rule ablations:
    """Target: the whole ablation grid and its table."""
    input:
        rules.ablation_summary.output,
