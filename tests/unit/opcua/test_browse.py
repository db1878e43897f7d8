"""The mirror's Browse (agent/opcua/browse.py) answers exactly as asyncua's own, on
asyncua's standard address space: every direction, reference-type filter (none, a
type alone or with its subtypes, one the server does not know) and node-class mask,
from hundreds of nodes, and for a node that does not exist."""

from __future__ import annotations

import asyncio
import itertools
import random

from asyncua import Server, ua
from asyncua.server.address_space import ViewService

from agent.opcua.browse import browse, subtypes
from agent.opcua.ua import node_id

IDS = ua.ObjectIds
REFTYPES = [node_id(0), node_id(IDS.References), node_id(IDS.HierarchicalReferences),
            node_id(IDS.HasChild), node_id(IDS.HasComponent), node_id(IDS.Organizes),
            node_id(IDS.HasSubtype), node_id(IDS.HasTypeDefinition), node_id(12345, 7)]
MASKS = [0, ua.NodeClass.Variable, ua.NodeClass.Object | ua.NodeClass.Method]


def _desc(nid: ua.NodeId, way: int, rtype: ua.NodeId, sub: bool, mask: int
          ) -> ua.BrowseDescription:
    d = ua.BrowseDescription()
    d.NodeId, d.BrowseDirection, d.ReferenceTypeId = nid, ua.BrowseDirection(way), rtype
    d.IncludeSubtypes, d.NodeClassMask = sub, mask
    return d


def test_browse_answers_as_asyncua_does() -> None:
    async def main() -> None:
        server = Server()
        await server.init()
        aspace = server.iserver.aspace
        theirs = ViewService(aspace)
        rng = random.Random(7)
        nodes = rng.sample(sorted(aspace.keys(), key=str), 300) + [node_id(999_999, 5)]
        combos = list(itertools.product((0, 1, 2), REFTYPES, (False, True), MASKS))
        compared = nonempty = 0
        for start in range(0, len(nodes), 50):
            params = ua.BrowseParameters()
            for nid in nodes[start:start + 50]:
                params.NodesToBrowse.extend(_desc(nid, *c) for c in rng.sample(combos, 12))
            ours, want = browse(aspace, params), theirs.browse(params)
            assert len(ours) == len(want)
            for a, b in zip(ours, want, strict=True):
                assert a.StatusCode == b.StatusCode
                assert a.References == b.References
                compared += 1
                nonempty += bool(a.References)
        assert compared == 301 * 12 and nonempty > 500
        assert ours[-1].StatusCode.value == ua.StatusCodes.BadNodeIdInvalid
        hier = subtypes(aspace, node_id(IDS.HierarchicalReferences))
        assert {node_id(IDS.HasComponent), node_id(IDS.Organizes), node_id(IDS.HasSubtype)} <= hier
        assert node_id(IDS.HasTypeDefinition) not in hier
    asyncio.run(main())
