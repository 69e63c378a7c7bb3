"""Admins configure each resource server's stream in admin; every change is evidence."""

from audit.models import AuditEvent
from ssf.models import Stream


def add(client, **fields):
    return client.post(
        "/admin/ssf/stream/add/",
        {"delivery": "push", "endpoint_url": "", "authorization_header": "", "enabled": "on"}
        | fields,
    )


def test_it_adds_a_stream_for_a_resource_server_with_evidence(client, admin_user, resource_server):
    client.force_login(admin_user)

    response = add(client, receiver=resource_server.pk, endpoint_url="https://rs.example/ssf")

    assert response.status_code == 302, response.content.decode()[:2000]
    stream = Stream.objects.get(receiver=resource_server)
    assert stream.delivery == "push"
    event = AuditEvent.objects.get(verb="ssf_stream.created")
    assert event.agent_id == resource_server.pk
    assert event.data["endpoint_url"] == "https://rs.example/ssf"


def test_a_push_stream_needs_an_endpoint_and_an_agent_cannot_have_one(
    client, admin_user, resource_server, agent
):
    client.force_login(admin_user)

    no_endpoint = add(client, receiver=resource_server.pk)
    not_a_server = add(client, receiver=agent.pk, delivery="poll")

    assert no_endpoint.status_code == 200 and not_a_server.status_code == 200
    assert "errorlist" in no_endpoint.content.decode()
    assert "Select a valid choice" in not_a_server.content.decode()
    assert not Stream.objects.exists()
    assert not AuditEvent.objects.filter(verb__startswith="ssf_stream.").exists()
