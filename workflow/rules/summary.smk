# Summary of every task's results (python -m cavl.summary): one table of metrics and chance
# levels, the comparison of the finetuning methods the run used, and a plot of each task's main
# metric against chance. Tagged for `snakemake --report report.html` with the training curves.


localrules:
    summary,


rule summary:
    """results/summary.md/.csv/.html (task, split, method, metric, value, chance, p_value, examples), methods.csv, plot."""
    input:
        metrics=expand("results/{task}/metrics.json", task=RUNNABLE_TASKS),
        logs=expand("results/{task}/log.jsonl", task=[t for t in RUNNABLE_TASKS if t in TRAINED_TASKS]),
    output:
        md="results/summary.md",
        html=report(
            "results/summary.html",
            caption="../report/summary.rst",
            category="1. Results",
            labels={"result": "1 summary: every task, metric and chance; methods"},
        ),
        plot=report(
            "results/summary.png",
            caption="../report/summary_plot.rst",
            category="1. Results",
            labels={"result": "2 main metric vs chance (plot)"},
        ),
        csv=report(
            "results/summary.csv",
            caption="../report/summary_csv.rst",
            category="1. Results",
            labels={"result": "3 summary table (CSV download)"},
        ),
        methods=report(
            "results/methods.csv",
            caption="../report/methods.rst",
            category="1. Results",
            labels={"result": "4 finetuning methods (CSV download)"},
        ),
    log:
        "logs/summary.log",
    conda:
        "../../envs/cavl.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "python -m cavl.summary --metrics {input.metrics} --train-logs {input.logs} "
        "--md {output.md} --csv {output.csv} --html {output.html} --methods {output.methods} "
        "--plot {output.plot} > {log} 2>&1"
