from devices.selectors import user_is_operator


def roles(request):
    """Lets every template show operator-only links without a query of its own."""
    return {"is_operator": user_is_operator(request.user)}
