"""A delegated grant's token: the verifier exposes the `act` chain, and revoking the root
grant refuses every token down the chain once the cascade's events arrive (poll)."""

import pytest
from custody_client.events import Poller
from custody_client.verify import TokenRevoked
from django.test import Client

from tests.approvals.test_delegation import chain, helper_b, helper_c  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_act_chain_is_exposed_and_a_cascade_refuses_the_whole_chain(
    chain,  # noqa: F811
    verifier,
    poll_stream,
    sponsor,
):
    agent_a, _, token_a, grant_a = chain["a"]
    helper_b_, _, token_b, _ = chain["b"]
    helper_c_, _, token_c, _ = chain["c"]

    verified = verifier.verify(token_c)
    assert verified.subject == agent_a.spiffe_id
    assert verified.actors == [helper_c_.spiffe_id, helper_b_.spiffe_id]
    assert verified.acting_agent == helper_c_.spiffe_id
    assert verifier.verify(token_a).actors == []

    client = Client()
    client.force_login(sponsor)
    assert client.post(f"/grants/{grant_a.pk}/revoke/", {"reason": "x"}).status_code == 302
    assert Poller(verifier).poll_once(return_immediately=True) == 3

    for token in (token_a, token_b, token_c):
        with pytest.raises(TokenRevoked):
            verifier.verify(token)
