"""Every change of who may approve for an agent is evidence (invariant 11), whichever page or
tool made it. The services audit their own writes; these receivers catch the rest, inside the
transaction that makes the change (m2m_changed and post_save run inside the admin's save).

An agent's life is owned (invariant 13): a sponsor who can no longer sign in (deactivated in
admin, by a service or by SSO deprovisioning), or a team whose last member left, orphans the
agents at once, here, in the transaction that made the change."""

from __future__ import annotations

from functools import partial

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import receiver
from guardian.models import GroupObjectPermission, UserObjectPermission

from agents import lifecycle, services
from agents.acting import ApprovalRightRefused, acting_person
from agents.models import Agent
from audit.services import Actor

APPROVAL_RIGHTS = {"approve_for_agent", "manage_approvers"}


def acting_actor() -> Actor:
    person = acting_person()
    return Actor.for_user(person) if person is not None else Actor.system("unattributed")


def membership_pairs(*, instance, action: str, reverse: bool, pk_set) -> list[tuple[int, int]]:
    """(user id, group id) pairs a `User.groups` m2m_changed signal is about, either side."""
    if action == "pre_clear":
        # pk_set is None for a clear: remember who is about to leave for post_clear.
        if reverse:
            instance._custody_clearing = [
                (pk, instance.pk) for pk in instance.user_set.values_list("pk", flat=True)
            ]
        else:
            instance._custody_clearing = [
                (instance.pk, pk) for pk in instance.groups.values_list("pk", flat=True)
            ]
        return instance._custody_clearing
    if action == "post_clear":
        return getattr(instance, "_custody_clearing", [])
    if reverse:
        return [(user_id, instance.pk) for user_id in sorted(pk_set or ())]
    return [(instance.pk, group_id) for group_id in sorted(pk_set or ())]


def refuse_if_self_granted(pairs, conferring_group_ids) -> None:
    """Joining a group that confers approval is granting approval: the acting person needs the
    'manage approvers' permission and may never add themselves."""
    person = acting_person()
    if person is None:
        return
    User = get_user_model()
    for user_id, group_id in pairs:
        if group_id not in conferring_group_ids:
            continue
        member = User.objects.get(pk=user_id)
        refusal = services.approval_rights_refusal(by=person, user=member)
        if refusal is not None:
            raise ApprovalRightRefused(
                refusal.message,
                record=partial(
                    services.approvers_change_refused,
                    by=person,
                    user=member,
                    action="group_member_add",
                    error=refusal,
                    group=Group.objects.get(pk=group_id).name,
                ),
            )


def _agent_content_type() -> ContentType:
    return ContentType.objects.get_for_model(Agent)


def agents_by_approver_group(group_ids) -> dict[int, list[int]]:
    """For each group among `group_ids`, the agents on which it holds approve_for_agent."""
    rows = GroupObjectPermission.objects.filter(
        group_id__in=list(group_ids),
        content_type=_agent_content_type(),
        permission__codename="approve_for_agent",
    ).values_list("group_id", "object_pk")
    found: dict[int, list[int]] = {}
    for group_id, object_pk in rows:
        found.setdefault(group_id, []).append(int(object_pk))
    return found


def audit_conferring_membership(
    *, instance, action: str, reverse: bool, pk_set, conferring_by_group, what: str
) -> None:
    """The one flow for a `User.groups` change that may confer approval: refuse a self-grant
    before the add, record each joiner or leaver after it. `conferring_by_group(group_ids)` maps
    each conferring group to what it confers; `what` names that in the evidence
    (`agent_ids` or `privileges`)."""
    if action not in {"pre_add", "post_add", "post_remove", "pre_clear", "post_clear"}:
        return
    pairs = membership_pairs(instance=instance, action=action, reverse=reverse, pk_set=pk_set)
    if not pairs:
        return
    conferring = conferring_by_group({group_id for _, group_id in pairs})
    if action == "pre_add":
        refuse_if_self_granted(pairs, set(conferring))
        return
    if action == "pre_clear":
        return
    User = get_user_model()
    actor = acting_actor()
    for user_id, group_id in pairs:
        if group_id in conferring:
            services.approver_group_membership_record(
                user=User.objects.get(pk=user_id),
                group=Group.objects.get(pk=group_id),
                added=action == "post_add",
                actor=actor,
                **{what: conferring[group_id]},
            )


@receiver(m2m_changed, sender=get_user_model().groups.through)
def audit_approver_group_membership(sender, instance, action, reverse, pk_set, **kwargs):
    audit_conferring_membership(
        instance=instance,
        action=action,
        reverse=reverse,
        pk_set=pk_set,
        conferring_by_group=agents_by_approver_group,
        what="agent_ids",
    )


def _is_approval_right(permission_row) -> bool:
    return (
        permission_row.content_type_id == _agent_content_type().pk
        and permission_row.permission.codename in APPROVAL_RIGHTS
    )


def _holder(permission_row) -> str:
    if isinstance(permission_row, UserObjectPermission):
        return f"user:{permission_row.user.get_username()}"
    return f"group:{permission_row.group.name}"


@receiver(post_save, sender=UserObjectPermission)
@receiver(post_save, sender=GroupObjectPermission)
def audit_approval_right_assigned(sender, instance, created, **kwargs):
    if not created or services.permission_writes_audited_by_service():
        return
    if _is_approval_right(instance):
        services.approver_permission_changed_record(
            agent_id=int(instance.object_pk),
            holder=_holder(instance),
            permission=instance.permission.codename,
            added=True,
            actor=acting_actor(),
        )


@receiver(post_delete, sender=UserObjectPermission)
@receiver(post_delete, sender=GroupObjectPermission)
def audit_approval_right_removed(sender, instance, **kwargs):
    if services.permission_writes_audited_by_service():
        return
    if _is_approval_right(instance):
        services.approver_permission_changed_record(
            agent_id=int(instance.object_pk),
            holder=_holder(instance),
            permission=instance.permission.codename,
            added=False,
            actor=acting_actor(),
        )


def _manage_approvers_permission_ids() -> set[int]:
    from django.contrib.auth.models import Permission

    return set(
        Permission.objects.filter(
            content_type=_agent_content_type(), codename="manage_approvers"
        ).values_list("pk", flat=True)
    )


@receiver(m2m_changed, sender=get_user_model().user_permissions.through)
@receiver(m2m_changed, sender=Group.permissions.through)
def audit_approver_managers(sender, instance, action, reverse, pk_set, **kwargs):
    """Who may manage approvers decides who may approve: giving or taking the model-wide
    'manage approvers' permission (a person's or a group's) is evidence too."""
    if action not in {"post_add", "post_remove"} or reverse:
        return  # the admin edits these from the person's or the group's page
    if not _manage_approvers_permission_ids() & set(pk_set or ()):
        return
    holder = (
        f"group:{instance.name}"
        if isinstance(instance, Group)
        else f"user:{instance.get_username()}"
    )
    services.approver_managers_changed_record(
        holder=holder, added=action == "post_add", actor=acting_actor()
    )


# --- ownership (invariant 13) ------------------------------------------------------------------


@receiver(post_save, sender=get_user_model())
def orphan_agents_of_deactivated_person(sender, instance, created, update_fields=None, **kwargs):
    if created or (update_fields is not None and "is_active" not in update_fields):
        return  # a sign-in saves last_login only: nothing about ownership changed
    actor = acting_actor()
    if instance.is_active:
        lifecycle.agents_unorphan_for_sponsor(sponsor=instance, actor=actor)
        return
    lifecycle.agents_orphan_for_sponsor(sponsor=instance, actor=actor)
    lifecycle.agents_orphan_for_empty_teams(
        team_ids=instance.groups.values_list("pk", flat=True), actor=actor
    )


@receiver(pre_delete, sender=get_user_model())
def orphan_agents_of_deleted_person(sender, instance, **kwargs):
    # Inside the deletion's transaction, before Agent.sponsor empties (SET_NULL): their agents
    # are orphaned naming them. Their membership rows go without an m2m_changed signal, so a
    # team they were the last member of is checked here too.
    actor = acting_actor()
    lifecycle.agents_orphan_for_deleted_sponsor(sponsor=instance, actor=actor)
    lifecycle.agents_orphan_for_empty_teams(
        team_ids=list(instance.groups.values_list("pk", flat=True)),
        actor=actor,
        leaving_user_id=instance.pk,
    )


@receiver(m2m_changed, sender=get_user_model().groups.through)
def orphan_agents_of_emptied_team(sender, instance, action, reverse, pk_set, **kwargs):
    if action not in {"post_remove", "post_clear"}:
        return
    pairs = membership_pairs(instance=instance, action=action, reverse=reverse, pk_set=pk_set)
    if action == "post_clear" and reverse:
        team_ids = {instance.pk}
    else:
        team_ids = {group_id for _, group_id in pairs}
    if team_ids:
        lifecycle.agents_orphan_for_empty_teams(team_ids=team_ids, actor=acting_actor())
