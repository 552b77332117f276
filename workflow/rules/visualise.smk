# Word-region alignment pictures (the paper's §5.3): the pretrained model, without finetuning, on
# the first val images of COCO and Flickr30k — detected boxes with class and attribute, each
# caption word's best region by cosine in the PwCL space and by last-layer attention, word x
# region heat maps — and the word→region hit rate over the Flickr30k Entities val phrases against
# a random region (cavl.visualise, cavl.alignment).


include: "functions/visualise.smk"


rule visualise:
    """results/visualisation/: PNGs, index.html and alignment.json (hit rates and p-values);
    results/visualisation.html: the page with its pictures embedded (the report's)."""
    input:
        unpack(visualise_inputs),
    output:
        pictures=directory("results/visualisation"),
        page=report(
            "results/visualisation.html",
            caption="../report/visualisation.rst",
            category="5. Word-region alignment",
        ),
    log:
        "logs/visualise.log",
    conda:
        "../../envs/cavl.yaml"
    threads: config["visualise"]["threads"]
    resources:
        mem_mb=4000,
    params:
        settings=json_arg(config["visualise"]),
        inputs=visualise_args,
    shell:
        "python -m cavl.visualise --backbone {input.backbone} --settings {params.settings} {params.inputs} "
        "--out {output.pictures} --page {output.page} > {log} 2>&1"
