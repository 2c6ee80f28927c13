from rest_framework import permissions

from devices.selectors import user_is_operator


class RegistryPermission(permissions.BasePermission):
    """Everyone signed in reads what they may see; only operators change the registry.

    Anonymous callers get nothing (401), as the default `IsAuthenticated` would give them.

    For a single object the decision waits until the object is looked up, so a resident asking
    to change someone else's object gets the same 404 as for one that does not exist.
    """

    message = "Only staff and operators may change the registry."

    def has_permission(self, request, view):
        if not request.user.is_authenticated:
            return False
        if request.method in permissions.SAFE_METHODS or user_is_operator(request.user):
            return True
        return bool(getattr(view, "detail", False))

    def has_object_permission(self, request, view, obj):
        return request.method in permissions.SAFE_METHODS or user_is_operator(request.user)


class IsOperator(permissions.BasePermission):
    message = "Only staff and operators may do this."

    def has_permission(self, request, view):
        return user_is_operator(request.user)


class OperatorsReadStaffWrite(permissions.BasePermission):
    """Operators and staff read; only staff change (credit policies, programs). Subclasses name
    what is refused in `message`."""

    message = "Only staff may change this; operators may read it."

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return user_is_operator(request.user)
        return bool(request.user and request.user.is_staff)


def resident_may_command(*, device, name: str, args: dict) -> str | None:
    """Residents may only switch the relay of their own controllable devices.

    Returns why not, or None when allowed. (Visibility of the device is checked before this.)
    """
    if not device.controllable:
        return "This device is not controllable."
    if name != "relay":
        return "Residents may only switch the relay on or off."
    return None
