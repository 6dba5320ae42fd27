"""The offline catalog: valid repo ids, a recommended quant among the listed ones, drafts that
pair models of one family (one tokenizer) with a much smaller one."""

from tandem.app.hub import HubService
from tandem.app.hub.names import check_repo_id


def test_the_catalog_is_consistent():
    catalog = HubService.catalog()
    models = {m["id"]: m for m in catalog["models"]}
    assert len(models) == len(catalog["models"]) >= 10
    for m in models.values():
        check_repo_id(m["repo"])
        assert m["recommended"] in m["quants"], m["id"]
        assert m["params_b"] > 0 and m["size_gb"] > 0 and m["context"] >= 2048
    assert len({m["family"] for m in models.values()}) >= 4  # several families, several sizes each
    for pair in catalog["drafts"]:
        target, draft = models[pair["target"]], models[pair["draft"]]
        assert target["family"] == draft["family"], pair
        assert draft["params_b"] * 3 < target["params_b"], pair  # draft_compatible's "a third of its size"
